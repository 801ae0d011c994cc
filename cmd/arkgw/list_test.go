package main

import (
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/outputs"
	"github.com/arkgw/arkgw/store"
)

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
