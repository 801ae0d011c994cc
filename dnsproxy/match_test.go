package dnsproxy

import "testing"

func TestMatcher(t *testing.T) {
	list := []string{"example.org.", "Arkgw.TEST", "xn--bcher-kva.example.", "_dmarc.mail.test.", "*.wild.test", "weird\\.label.test."}
	m, err := CompileMatcher(false, list)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want bool
	}{
		{"example.org.", true},
		{"example.org", true},
		{"www.example.org.", true},
		{"a.b.c.example.org.", true},
		{"EXAMPLE.ORG.", true},
		{"WwW.ExAmPlE.oRg", true},
		{"evil-example.org.", false},
		{"example.org.evil.test.", false},
		{"notexample.org.", false},
		{"org.", false},
		{".", false},
		{"", false},
		{"example.com.", false},
		{"evil\\.example.org.", false}, // one label "evil.example" under org.
		{"www.evil\\.example.org.", false},
		{"a\\.b.example.org.", true}, // label "a.b" under example.org.
		{"\\069xample.org.", true},   // \069 = 'E'
		{"\\101xample.org.", true},   // \101 = 'e'
		{"x\\000.example.org.", true},
		{"example\\000.org.", false},
		{"www.arkgw.test.", true},
		{"big.ARKGW.test.", true},
		{"arkgw.testing.", false},
		{"xn--bcher-kva.example.", true},
		{"www.XN--BCHER-KVA.example.", true},
		{"bücher.example.", false}, // raw UTF-8 never matches the punycode entry
		{"xn--bcher-kva2.example.", false},
		{"_dmarc.mail.test.", true},
		{"mail.test.", false},
		{"wild.test.", true},
		{"a.wild.test.", true},
		{"weird\\.label.test.", true},
		{"x.weird\\.label.test.", true},
		{"label.test.", false},
		{"weird.label.test.", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := m.Allowed(tt.name); got != tt.want {
				t.Errorf("Allowed(%q) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}

func TestMatcherAnyAndRoot(t *testing.T) {
	any, err := CompileMatcher(true, nil)
	if err != nil {
		t.Fatal(err)
	}
	root, err := CompileMatcher(false, []string{"."})
	if err != nil {
		t.Fatal(err)
	}
	none, err := CompileMatcher(false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"example.org.", "a.b.c.", "x\\.y."} {
		if !any.Allowed(n) || !root.Allowed(n) {
			t.Errorf("%q: any and \".\" must allow everything", n)
		}
		if none.Allowed(n) {
			t.Errorf("%q: an empty allowlist allows nothing", n)
		}
	}
}

func TestMatcherBadEntries(t *testing.T) {
	for _, e := range []string{"", "  ", "bücher.example", "a..b", string(make([]byte, 300))} {
		if _, err := CompileMatcher(false, []string{e}); err == nil {
			t.Errorf("entry %q accepted", e)
		}
	}
}
