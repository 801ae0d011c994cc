package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/outputs"
	"github.com/arkgw/arkgw/store"
)

// A completed experiment's row says why it ended; a start failure names its
// cause and the non-zero exit recorded for it.
func TestPrintListSaysWhy(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		x    store.Experiment
		want []string
	}{
		{"refused at start", store.Experiment{ID: "x1", State: store.Completed, Reason: store.ReasonRefused,
			Detail: "container root /var/lib/arkgw/containers/ark-9: no such file or directory", ExitCode: daemon.ExitStartFailed},
			[]string{"refused at start: container root /var/lib/arkgw/containers/ark-9", "(exit 125)"}},
		{"finished", store.Experiment{ID: "x2", State: store.Completed, Reason: store.ReasonFinished, ExitCode: 3},
			[]string{"finished (exit 3)"}},
		{"running", store.Experiment{ID: "x3", State: store.Running, Deadline: now.Add(time.Hour)},
			[]string{"ends in 1h0m0s"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b bytes.Buffer
			printList(&b, []daemon.ExperimentView{{Experiment: c.x}}, now)
			for _, w := range c.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("list row %q lacks %q", b.String(), w)
				}
			}
		})
	}
}

func TestListResultsColumn(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    *outputs.Progress
		want string
	}{
		{"outputs off", nil, "-"},
		{"shipped", &outputs.Progress{Shipped: true, ShippedBytes: 10}, "shipped"},
		{"backlog", &outputs.Progress{PendingBytes: 4096}, "4096 bytes to ship"},
		{"running, all sent so far", &outputs.Progress{ShippedBytes: 10}, "shipping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			printList(&b, []daemon.ExperimentView{{Experiment: store.Experiment{ID: "x1", State: store.Completed, Reason: "finished"}, Outputs: tc.p}}, time.Now())
			lines := strings.Split(strings.TrimSpace(b.String()), "\n")
			if len(lines) != 2 || !strings.HasSuffix(lines[0], "RESULTS") || !strings.HasSuffix(strings.TrimSpace(lines[1]), tc.want) {
				t.Errorf("list:\n%s\nwant a RESULTS column saying %q", b.String(), tc.want)
			}
		})
	}
}
