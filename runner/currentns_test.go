package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/store"
)

// TestPrivilegedNodeInCurrentNamespace runs the daemon as a node does: the
// whole process inside the node's namespace, the runner given no handle.
// The flow log must name the experiment that sent a flow, live and after it
// ended, and the alert stream must hold nothing self-inflicted (on main the
// runner turned "no handle" into setns(-1): no flow was ever recorded and
// an overrun alert was written every 100 ms).
func TestPrivilegedNodeInCurrentNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds netlab namespaces and runs sandboxes")
	}
	if !netlab.InOwnNetNS(t) {
		return
	}
	w := netlab.NewCurrentWorld(t)
	state := t.TempDir()
	nd := startNodeIn(t, w, state, 2000+os.Getpid()%1000, "127.0.0.1:0", nsdo.Current())
	defer nd.stop(t)

	id := nd.submit(t, fmt.Sprintf(probeManifest, `arkprobe http http://198.51.100.80/; arkprobe tcp 203.0.113.10:22; echo done; sleep 600`))
	nd.waitState(t, id, store.Running, 30*time.Second)
	if out := nd.waitLog(t, id, "done", 60*time.Second); !strings.Contains(out, "tcp 203.0.113.10:22: FAIL") {
		t.Errorf("experiment output:\n%s", out)
	}
	flows := func(t *testing.T) flowlog.Result {
		t.Helper()
		var res flowlog.Result
		body, err := nd.client.Raw("/api/v1/flows?dst=" + netlab.WWW4 + "&port=80")
		if err != nil || json.Unmarshal(body, &res) != nil {
			t.Fatalf("flows API: %v %s", err, body)
		}
		if res.OpenError != "" {
			t.Fatalf("live dump failed: %s", res.OpenError)
		}
		return res
	}
	// Live: the connection's conntrack entry lingers (TIME_WAIT).
	if res := flows(t); len(res.Open) == 0 || res.Open[0].Experiment != id || res.Open[0].NATSrc.String() != netlab.NodeUplink4 {
		t.Errorf("live flows to %s:80: %+v, want the experiment's", netlab.WWW4, res)
	}
	// The violation is alerted (the NFLOG reader works in the current
	// namespace too).
	nd.waitAlert(t, id, func(r alert.Record) bool { return r.Kind == alert.KindPacket && r.DstPort == 22 })
	if _, err := nd.client.Stop(id); err != nil {
		t.Fatal(err)
	}
	nd.waitState(t, id, store.Completed, 10*time.Second)
	// After the stop: in the store, attributed and NATed.
	var res flowlog.Result
	for deadline := time.Now().Add(10 * time.Second); len(res.Flows) == 0 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		res = flows(t)
	}
	if len(res.Flows) == 0 || res.Flows[0].Experiment != id || res.Flows[0].NATSrc.String() != netlab.NodeUplink4 {
		t.Errorf("recorded flows to %s:80: %+v, want the experiment's", netlab.WWW4, res.Flows)
	}
	// Nothing the daemon did to itself in the alert stream.
	var recs []alert.Record
	body, err := nd.client.Raw("/api/v1/alerts")
	if err != nil || json.Unmarshal(body, &recs) != nil {
		t.Fatalf("alerts API: %v %s", err, body)
	}
	for _, r := range recs {
		if r.Kind == alert.KindOverrun || r.Kind == alert.KindFault {
			t.Errorf("self-inflicted alert: %s", alert.FormatLine(r))
		}
	}
}
