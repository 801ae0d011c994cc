package alert

import "testing"

// FuzzParseLogPrefix: NFLOG prefixes of other rules logging to the same
// group are arbitrary bytes.
func FuzzParseLogPrefix(f *testing.F) {
	f.Add("ark:e1:tcp-dst")
	f.Add("ark:e1:tcp-dst\x00")
	f.Add("ark::x")
	f.Add("foo")
	f.Fuzz(func(t *testing.T, p string) {
		id, rule, err := ParseLogPrefix(p)
		if err != nil {
			return
		}
		if id == "" || rule == "" {
			t.Fatalf("ParseLogPrefix(%q) = %q, %q without error", p, id, rule)
		}
		if id2, rule2, err := ParseLogPrefix(LogPrefix(id, rule)); err != nil || id2 != id || rule2 != rule {
			t.Fatalf("round trip of %q/%q: %q %q %v", id, rule, id2, rule2, err)
		}
	})
}
