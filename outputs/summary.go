package outputs

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/store"
)

// Status is status.json: how the experiment ended and what was shipped.
type Status struct {
	Experiment    string          `json:"experiment"`
	Node          string          `json:"node"`
	Title         string          `json:"title"`
	Experimenters []store.Contact `json:"experimenters"`
	State         string          `json:"state"`
	Reason        string          `json:"reason"`
	Detail        string          `json:"detail,omitempty"`
	ExitCode      int             `json:"exit_code"`
	Signal        string          `json:"signal,omitempty"`
	// LimitsHit names each limit the experiment ran into: "max_hours",
	// "max_ram_mb", "output_mb", "max_mb_per_day", "alerts".
	LimitsHit  []string  `json:"limits_hit"`
	Submitted  time.Time `json:"submitted"`
	Started    time.Time `json:"started,omitzero"`
	Ended      time.Time `json:"ended,omitzero"`
	CPUSeconds float64   `json:"cpu_seconds"`
	BytesUp    uint64    `json:"bytes_up"`
	BytesDown  uint64    `json:"bytes_down"`
	Alerts     uint64    `json:"alerts"`
	Stdout     Stream    `json:"stdout"`
	Stderr     Stream    `json:"stderr"`
}

// Stream describes the chunks of stdout or stderr in the store.
type Stream struct {
	Bytes   int64 `json:"bytes"`   // shipped, in Chunks objects stdout/000001 ...
	Chunks  int   `json:"chunks"`  // objects
	Dropped int64 `json:"dropped"` // written past output_mb, never stored
}

// sandboxStatus is the part of the sandbox's own status.json (nsholder's
// ExitStatus) that status.json repeats.
type sandboxStatus struct {
	Stdout struct {
		Dropped int64 `json:"dropped"`
	} `json:"stdout"`
	Stderr struct {
		Dropped int64 `json:"dropped"`
	} `json:"stderr"`
}

func readSandboxStatus(path string) sandboxStatus {
	var st sandboxStatus
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &st) // absent or unreadable: nothing dropped known
	}
	return st
}

func statusDoc(x *store.Experiment, node string, r *expRec, sb sandboxStatus) Status {
	d := Status{
		Experiment: x.ID, Node: node, Title: x.Title, Experimenters: x.Experimenters,
		State: x.State, Reason: x.Reason, Detail: x.Detail, ExitCode: x.ExitCode, Signal: x.Signal,
		LimitsHit: []string{}, Submitted: x.Submitted, Started: x.Started, Ended: x.Ended,
		CPUSeconds: x.CPUSecs, BytesUp: x.BytesUp, BytesDown: x.BytesDown, Alerts: x.Alerts,
	}
	if d.Experimenters == nil {
		d.Experimenters = []store.Contact{}
	}
	if s := r.Streams["stdout"]; s != nil {
		d.Stdout = Stream{Bytes: s.Queued, Chunks: s.Chunks}
	}
	if s := r.Streams["stderr"]; s != nil {
		d.Stderr = Stream{Bytes: s.Queued, Chunks: s.Chunks}
	}
	d.Stdout.Dropped, d.Stderr.Dropped = sb.Stdout.Dropped, sb.Stderr.Dropped
	switch x.Reason {
	case store.ReasonTimeout:
		d.LimitsHit = append(d.LimitsHit, "max_hours")
	case store.ReasonQuota:
		d.LimitsHit = append(d.LimitsHit, "max_mb_per_day")
	}
	if len(x.Reason) >= len(store.ReasonViolations) && x.Reason[:len(store.ReasonViolations)] == store.ReasonViolations {
		d.LimitsHit = append(d.LimitsHit, "alerts")
	}
	if x.OOM {
		d.LimitsHit = append(d.LimitsHit, "max_ram_mb")
	}
	if sb.Stdout.Dropped > 0 || sb.Stderr.Dropped > 0 {
		d.LimitsHit = append(d.LimitsHit, "output_mb")
	}
	return d
}

// writeAlerts writes the experiment's alerts as JSON lines, as in the
// node's alerts file.
func (s *Shipper) writeAlerts(path, id string, since time.Time) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("outputs: %w", err)
	}
	w := bufio.NewWriter(f)
	if s.cfg.AlertsOf != nil {
		err = s.cfg.AlertsOf(id, since, func(r alert.Record) error {
			b, err := alert.Marshal(r)
			if err != nil {
				return err
			}
			w.Write(b)
			return w.WriteByte('\n')
		})
	}
	return finishTemp(f, w, tmp, path, err)
}

// FlowSummary is one line of flows.jsonl: the experiment's traffic to one
// destination, port and protocol.
type FlowSummary struct {
	Dst        string    `json:"dst"`
	Port       uint16    `json:"port,omitempty"`
	Proto      string    `json:"proto"`
	Flows      int       `json:"flows"`
	PacketsOut uint64    `json:"packets_out"`
	BytesOut   uint64    `json:"bytes_out"`
	PacketsIn  uint64    `json:"packets_in"`
	BytesIn    uint64    `json:"bytes_in"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
}

// writeFlows sums the experiment's flows that ended between since and
// until, asking the flow log one hour at a time and counting each flow in
// the hour it ended.
func (s *Shipper) writeFlows(path, id string, since, until time.Time) error {
	var sums []FlowSummary
	type key struct {
		dst   string
		port  uint16
		proto uint8
	}
	idx := map[key]int{}
	for from := since.Truncate(time.Hour); s.cfg.FlowsOf != nil && !from.After(until); from = from.Add(time.Hour) {
		to := from.Add(time.Hour)
		flows, err := s.cfg.FlowsOf(id, from, to)
		if err != nil {
			return fmt.Errorf("outputs: flows of experiment %s: %w", id, err)
		}
		for _, f := range flows {
			if end := flowEnd(f); f.Experiment != id || end.Before(from) || !end.Before(to) {
				continue
			}
			k := key{f.Dst.String(), f.DPort, f.Proto}
			i, ok := idx[k]
			if !ok {
				i = len(sums)
				idx[k] = i
				sums = append(sums, FlowSummary{Dst: k.dst, Port: k.port, Proto: alert.ProtoName(k.proto), FirstSeen: f.Start, LastSeen: flowEnd(f)})
			}
			sm := &sums[i]
			sm.Flows++
			sm.PacketsOut += f.PktsOut
			sm.BytesOut += f.BytesOut
			sm.PacketsIn += f.PktsIn
			sm.BytesIn += f.BytesIn
			if f.Start.Before(sm.FirstSeen) {
				sm.FirstSeen = f.Start
			}
			if end := flowEnd(f); end.After(sm.LastSeen) {
				sm.LastSeen = end
			}
		}
	}
	sort.Slice(sums, func(i, j int) bool {
		a, b := sums[i], sums[j]
		if !a.FirstSeen.Equal(b.FirstSeen) {
			return a.FirstSeen.Before(b.FirstSeen)
		}
		if a.Dst != b.Dst {
			return a.Dst < b.Dst
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		return a.Proto < b.Proto
	})
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("outputs: %w", err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, sm := range sums {
		sm.FirstSeen, sm.LastSeen = sm.FirstSeen.UTC(), sm.LastSeen.UTC()
		if err = enc.Encode(sm); err != nil {
			break
		}
	}
	return finishTemp(f, w, tmp, path, err)
}

// flowEnd is when a flow was last seen (its start while still open).
func flowEnd(f flowlog.Flow) time.Time {
	if f.End.IsZero() {
		return f.Start
	}
	return f.End
}

// finishTemp flushes, fsyncs and renames a temp file into place.
func finishTemp(f *os.File, w *bufio.Writer, tmp, path string, err error) error {
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("outputs: write %s: %w", path, err)
	}
	return nil
}
