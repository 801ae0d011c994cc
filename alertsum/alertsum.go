// Package alertsum aggregates alert records for the owner page: one group
// per (experiment, rule, destination) with a count and the first and last
// time, and a count of alerts per hour. The daemon feeds it every record it
// emits and, at start, the records of the alerts file it still has, so a
// page view reads memory instead of the alerts file.
//
// It is bounded: at most MaxGroups groups (the group whose last alert is
// the oldest gives way to a new one, and its count goes to the
// experiment's "other destinations" group, so no alert goes uncounted) and
// Hours hourly counters (a ring).
package alertsum

import (
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/arkgw/arkgw/alert"
)

// Bounds.
const (
	MaxGroups = 4096
	Hours     = 7 * 24
	// Other is the destination of a group that collects evicted groups.
	Other = "(other destinations)"
)

// Key identifies a group.
type Key struct {
	Experiment  string `json:"experiment"`
	Rule        string `json:"rule"`        // kind/rule, as `arkgw alerts` prints it
	Destination string `json:"destination"` // "tcp 198.51.100.1:25", "dns blocked.test", ...
}

// Group is the aggregate of one key.
type Group struct {
	Key
	Count   uint64    `json:"count"` // packets (or queries) the alerts stand for
	Alerts  uint64    `json:"alerts"`
	First   time.Time `json:"first"`
	Last    time.Time `json:"last"`
	Message string    `json:"message,omitempty"` // of the newest alert
}

// Summary is safe for concurrent use.
type Summary struct {
	mu     sync.Mutex
	groups map[Key]*Group
	hours  [Hours]hour
}

type hour struct {
	n     int64 // hours since the epoch; 0 = empty
	count uint64
}

// New returns an empty summary.
func New() *Summary { return &Summary{groups: map[Key]*Group{}} }

// KeyOf is the group r belongs to.
func KeyOf(r alert.Record) Key {
	rule := r.Kind
	if r.Rule != "" {
		rule += "/" + r.Rule
	}
	return Key{Experiment: r.Experiment, Rule: rule, Destination: Destination(r)}
}

// Destination says where r's packets or queries went.
func Destination(r alert.Record) string {
	switch {
	case r.Kind == alert.KindDNS || r.Name != "":
		return "dns " + r.Name
	case r.Dst == "" && r.Proto == "":
		return ""
	}
	dst := r.Dst
	if r.DstPort != 0 {
		if a, err := netip.ParseAddr(r.Dst); err == nil {
			dst = netip.AddrPortFrom(a, uint16(r.DstPort)).String()
		} else {
			dst += ":" + strconv.Itoa(r.DstPort)
		}
	}
	s := r.Proto + " " + dst
	if r.ICMPType != nil {
		s += " type " + strconv.Itoa(*r.ICMPType)
	}
	return s
}

func span(r alert.Record) (first, last time.Time) {
	first, last = r.FirstSeen, r.LastSeen
	if first.IsZero() {
		first = r.Time
	}
	if last.IsZero() || last.Before(first) {
		last = r.Time
	}
	if last.Before(first) {
		first = last
	}
	return first.UTC(), last.UTC()
}

// Add counts one record.
func (s *Summary) Add(r alert.Record) {
	n := r.Packets
	if n == 0 {
		n = 1
	}
	first, last := span(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	k := KeyOf(r)
	g := s.groups[k]
	if g == nil {
		if len(s.groups) >= MaxGroups {
			s.evictLocked()
		}
		if g = s.groups[k]; g == nil {
			g = &Group{Key: k, First: first, Last: last}
			s.groups[k] = g
		}
	}
	s.merge(g, n, 1, first, last, r.Message)
	h := r.Time.UTC().Unix() / 3600
	slot := &s.hours[h%Hours]
	if slot.n != h {
		if slot.n > h {
			return // older than the ring
		}
		*slot = hour{n: h}
	}
	slot.count++
}

func (s *Summary) merge(g *Group, n, alerts uint64, first, last time.Time, msg string) {
	g.Count += n
	g.Alerts += alerts
	if first.Before(g.First) {
		g.First = first
	}
	if !last.Before(g.Last) {
		g.Last = last
		if msg != "" {
			g.Message = msg
		}
	}
}

// evictLocked makes room: the eighth of the groups with the oldest last
// alerts (never an "other" group) are folded into their experiments'
// Other groups, so that a flood of new destinations costs one sort per
// MaxGroups/8 alerts, not a scan per alert.
func (s *Summary) evictLocked() {
	victims := make([]*Group, 0, len(s.groups))
	for _, g := range s.groups {
		if g.Destination != Other {
			victims = append(victims, g)
		}
	}
	sort.Slice(victims, func(i, j int) bool { return victims[i].Last.Before(victims[j].Last) })
	for _, v := range victims[:min(len(victims), MaxGroups/8)] {
		delete(s.groups, v.Key)
		ok := Key{Experiment: v.Experiment, Rule: "(several)", Destination: Other}
		o := s.groups[ok]
		if o == nil {
			o = &Group{Key: ok, First: v.First, Last: v.Last}
			s.groups[ok] = o
		}
		s.merge(o, v.Count, v.Alerts, v.First, v.Last, "")
	}
}

// Groups returns the groups of one experiment ("" = all), newest last
// alert first, at most max (0 = all).
func (s *Summary) Groups(experiment string, max int) []Group {
	s.mu.Lock()
	out := make([]Group, 0, len(s.groups))
	for _, g := range s.groups {
		if experiment == "" || g.Experiment == experiment {
			out = append(out, *g)
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.Last.Equal(b.Last) {
			return a.Last.After(b.Last)
		}
		if a.Experiment != b.Experiment {
			return a.Experiment < b.Experiment
		}
		if a.Rule != b.Rule {
			return a.Rule < b.Rule
		}
		return a.Destination < b.Destination
	})
	if max > 0 && len(out) > max {
		out = out[:max]
	}
	return out
}

// HourCount is the number of alerts in one hour.
type HourCount struct {
	Start time.Time `json:"start"`
	Count uint64    `json:"count"`
}

// PerHour returns the alerts per hour for the n hours up to and including
// the one of now (n at most Hours), oldest first; hours without alerts
// count zero.
func (s *Summary) PerHour(now time.Time, n int) []HourCount {
	if n > Hours {
		n = Hours
	}
	h := now.UTC().Unix() / 3600
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]HourCount, 0, n)
	for k := h - int64(n) + 1; k <= h; k++ {
		c := HourCount{Start: time.Unix(k*3600, 0).UTC()}
		if sl := s.hours[((k%Hours)+Hours)%Hours]; sl.n == k {
			c.Count = sl.count
		}
		out = append(out, c)
	}
	return out
}
