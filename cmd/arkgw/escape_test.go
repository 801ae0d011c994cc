package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/store"
)

func listOf(title, email, reason, id string) []daemon.ExperimentView {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	return []daemon.ExperimentView{
		{Experiment: store.Experiment{ID: id, State: store.Completed, Title: title, Reason: reason,
			Experimenters: []store.Contact{{Name: "n", Email: email}}, Submitted: now}},
		{Experiment: store.Experiment{ID: "x2", State: store.Planned, Title: "plain", Start: now}},
	}
}

// A title or contact with escape codes is printed escaped by `arkgw list`,
// one row per experiment; JSON keeps it exact.
func TestListEscapesExperimenterText(t *testing.T) {
	cases := []struct {
		name, title, email, want string
	}{
		{"csi title", "survey \u001b[2J\u001b]0;PWN\a", "a@b.example", `survey \x1b[2J\x1b]0;PWN\x07`},
		{"newline title", "two\nrows", "a@b.example", `two\nrows`},
		{"tab title", "a\tb", "a@b.example", `a\tb`},
		{"bidi email", "t", "moc.live\u202e@x", `moc.live\u202e@x`},
		{"c1 csi", "t\u009b31m", "e", `t\u009b31m`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b bytes.Buffer
			printList(&b, listOf(c.title, c.email, "finished", "x1"), time.Now())
			out := b.String()
			if alert.HasControl(out) {
				t.Fatalf("list output holds a control character:\n%q", out)
			}
			if !strings.Contains(out, c.want) {
				t.Fatalf("list output %q lacks %q", out, c.want)
			}
			if n := strings.Count(out, "\n"); n != 3 {
				t.Fatalf("list has %d lines, want header + 2 rows:\n%s", n, out)
			}
		})
	}
}

// FuzzListAndFlowsTables: whatever an experimenter writes in a manifest's
// title or contacts, and whatever ids the flow log returns, the tables
// printed for staff hold no control character and one line per row.
func FuzzListAndFlowsTables(f *testing.F) {
	f.Add("ping survey", "a@b.example", "finished", "x1")
	f.Add("\x1b[2J", "\x9b", "\u202e", "\xff\x00")
	f.Fuzz(func(t *testing.T, title, email, reason, id string) {
		var b bytes.Buffer
		printList(&b, listOf(title, email, reason, id), time.Now())
		if out := b.String(); alert.HasControl(out) || strings.Count(out, "\n") != 3 {
			t.Fatalf("list table %q", out)
		}
		b.Reset()
		a := netip.MustParseAddr("10.250.0.2")
		printFlows(&b, flowlog.Result{Flows: []flowlog.Flow{{Experiment: id, Proto: 6, Src: a, Dst: a, NATSrc: a}}})
		if out := b.String(); alert.HasControl(out) || strings.Count(out, "\n") != 2 {
			t.Fatalf("flows table %q", out)
		}
		b.Reset()
		w := &terminalWriter{w: &b}
		w.Write([]byte("title: " + title + "\n"))
		w.Write([]byte(email))
		w.Flush()
		// A line feed in a value written whole is taken as layout there;
		// what matters is that no control character gets through.
		if out := b.String(); alert.HasControl(out) {
			t.Fatalf("check report %q", out)
		}
		b.Reset()
		tw := &terminalWriter{w: &b}
		tw.Write([]byte(title))
		tw.Write([]byte(reason))
		tw.Flush()
		if out := b.String(); alert.HasControl(out) {
			t.Fatalf("logs on a terminal %q", out)
		}
	})
}

// `arkgw logs` to a terminal: the experiment's escape sequences arrive
// escaped, lines and tabs kept, multi-byte characters intact across any
// write boundary.
func TestTerminalWriter(t *testing.T) {
	in := "plain line\n\x1b[2J\x1b]0;PWN\x07 café\tcol ☕ \u202e end\n\xff"
	want := "plain line\n" + `\x1b[2J\x1b]0;PWN\x07 café` + "\tcol ☕ " + `\u202e end` + "\n" + `\xff`
	for split := 0; split <= len(in); split++ {
		for _, step := range []int{1, 2, 3, len(in)} {
			var b bytes.Buffer
			w := &terminalWriter{w: &b}
			chunks := []string{in[:split]}
			for rest := in[split:]; rest != ""; {
				n := min(step, len(rest))
				chunks = append(chunks, rest[:n])
				rest = rest[n:]
			}
			for _, c := range chunks {
				if n, err := w.Write([]byte(c)); err != nil || n != len(c) {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			w.Flush()
			if b.String() != want {
				t.Fatalf("split %d step %d:\n got %q\nwant %q", split, step, b.String(), want)
			}
		}
	}
}
