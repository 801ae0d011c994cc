package flowlog

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ParseQuery reads a query from URL parameters (API requests are untrusted):
// experiment, dst (address or prefix), src, port, sport, proto, at, since, until
// (RFC 3339), limit.
func ParseQuery(v url.Values) (Query, error) {
	var q Query
	q.Experiment = v.Get("experiment")
	if s := v.Get("dst"); s != "" {
		p, err := parsePrefix(s)
		if err != nil {
			return q, fmt.Errorf("dst %q: want an address or prefix like 198.51.100.9 or 198.51.100.0/24", s)
		}
		q.Dst = p
	}
	if s := v.Get("src"); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return q, fmt.Errorf("src %q: want an address", s)
		}
		q.Src = a.Unmap()
	}
	if s := v.Get("port"); s != "" {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return q, fmt.Errorf("port %q: want 1-65535", s)
		}
		q.Port = uint16(n)
	}
	if s := v.Get("sport"); s != "" {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return q, fmt.Errorf("sport %q: want 1-65535", s)
		}
		q.SPort = uint16(n)
	}
	if s := v.Get("proto"); s != "" {
		p, err := ParseProto(s)
		if err != nil {
			return q, err
		}
		q.Proto = p
	}
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{"at", &q.At}, {"since", &q.Since}, {"until", &q.Until}} {
		if s := v.Get(f.name); s != "" {
			t, err := time.Parse(time.RFC3339, s)
			if err != nil {
				return q, fmt.Errorf("%s %q: want an RFC 3339 time like 2026-11-25T14:03:00Z", f.name, s)
			}
			*f.dst = t
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100000 {
			return q, fmt.Errorf("limit %q: want 1-100000", s)
		}
		q.Limit = n
	}
	return q, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		if p.Addr().Is4In6() {
			return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96), nil
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Result is the API answer: stored (finished) flows and, from a live dump,
// flows still open. OpenError says why the live dump failed (the open
// flows are then unknown, not absent).
type Result struct {
	Flows     []Flow `json:"flows"`
	Open      []Flow `json:"open,omitempty"`
	OpenError string `json:"open_error,omitempty"`
}

// Handler serves GET /api/v1/flows.
func Handler(s *Store, r *Recorder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q, err := ParseQuery(req.URL.Query())
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		var res Result
		if res.Flows, err = s.Find(q); err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		if r != nil && (q.At.IsZero() || time.Since(q.At) < 24*time.Hour) {
			if res.Open, err = r.Open(q); err != nil {
				res.OpenError = err.Error()
			}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	})
}
