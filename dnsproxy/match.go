package dnsproxy

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Matcher decides whether a query name is allowed. It is compiled once from
// the experiment's allowlist and is safe for concurrent use (read-only).
//
// Matching is label-wise on the wire form of the name: every listed domain
// allows itself and every name below it. Names are compared after ASCII
// lowercasing, with escapes (`\.`, `\065`) resolved, so `evil\.example.org.`
// (one label "evil.example" under "org.") is NOT under `example.org.`, and
// `evil-example.org.` is not either. Internationalized names are compared in
// their punycode (xn--) form, the form queries arrive in; allowlist entries
// must be punycode already (CompileMatcher refuses non-ASCII entries), so a
// query carrying raw UTF-8 bytes matches no entry.
type Matcher struct {
	any   bool
	names map[string]struct{} // lowercased wire form of each allowed suffix
}

// CompileMatcher builds a Matcher. any allows every name. Entries are domain
// names with or without the trailing dot, in any case, in punycode (xn--);
// "." allows everything. An entry that is not a valid domain name is an error.
func CompileMatcher(any bool, names []string) (*Matcher, error) {
	m := &Matcher{any: any, names: make(map[string]struct{}, len(names))}
	for _, n := range names {
		w, err := entryWire(n)
		if err != nil {
			return nil, err
		}
		m.names[string(w)] = struct{}{}
	}
	return m, nil
}

func entryWire(n string) ([]byte, error) {
	s := strings.TrimSpace(n)
	if s == "" {
		return nil, fmt.Errorf("dns allowlist entry %q: empty name (remove it or write a domain such as example.org)", n)
	}
	if strings.HasPrefix(s, "*.") { // "*.example.org" means the same as "example.org" here
		s = s[2:]
	}
	if !isASCII(s) {
		// configs validates names and converts them to punycode; queries
		// arrive in punycode, so a raw UTF-8 entry could never match.
		return nil, fmt.Errorf("dns allowlist entry %q: not ASCII (write internationalized names in punycode, xn--...)", n)
	}
	s = dns.Fqdn(s)
	if _, ok := dns.IsDomainName(s); !ok {
		return nil, fmt.Errorf("dns allowlist entry %q: not a valid domain name", n)
	}
	w, err := nameWire(s)
	if err != nil {
		return nil, fmt.Errorf("dns allowlist entry %q: %w", n, err)
	}
	return w, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// nameWire returns the uncompressed, ASCII-lowercased wire form of a
// presentation-format name (escapes resolved).
func nameWire(s string) ([]byte, error) {
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(s), buf, 0, nil, false)
	if err != nil {
		return nil, fmt.Errorf("name %q: %w", s, err)
	}
	return lowerWire(buf[:n]), nil
}

// lowerWire lowercases ASCII letters in a wire-form name in place. Length
// octets are below 64 and so never in 'A'..'Z'.
func lowerWire(w []byte) []byte {
	for i, c := range w {
		if c >= 'A' && c <= 'Z' {
			w[i] = c + ('a' - 'A')
		}
	}
	return w
}

// Any reports whether every name is allowed.
func (m *Matcher) Any() bool { return m.any }

// Allowed reports whether the presentation-format name (as miekg/dns
// unpacks it: escaped, any case, with or without the trailing dot) is allowed.
func (m *Matcher) Allowed(name string) bool {
	if m.any {
		return true
	}
	var buf [256]byte
	n, err := dns.PackDomainName(dns.Fqdn(name), buf[:], 0, nil, false)
	if err != nil {
		return false
	}
	return m.allowedWire(lowerWire(buf[:n]))
}

// allowedWire matches an uncompressed, lowercased wire-form name.
func (m *Matcher) allowedWire(w []byte) bool {
	if m.any {
		return true
	}
	for off := 0; off < len(w); {
		if _, ok := m.names[string(w[off:])]; ok {
			return true
		}
		l := int(w[off])
		if l == 0 {
			break
		}
		off += 1 + l
	}
	return false
}
