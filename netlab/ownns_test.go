package netlab

import (
	"os"
	"strings"
	"testing"
)

// The child runs with every thread in its own namespace, which a Current
// host adopts; outside a child, Current is refused.
func TestPrivilegedInOwnNetNS(t *testing.T) {
	requireRoot(t)
	t.Run("refused outside", func(t *testing.T) {
		if os.Getenv(envOwnNS) != "" {
			t.Skip("inside a child")
		}
		l := &Lab{t: t, id: randID(6), hosts: map[string]*Host{}}
		t.Cleanup(l.cleanup)
		if err := l.addHost(HostSpec{Name: "node", Current: true}); err == nil || !strings.Contains(err.Error(), "InOwnNetNS") {
			t.Fatalf("Current host outside InOwnNetNS: %v", err)
		}
	})
	t.Run("child", func(t *testing.T) {
		if !InOwnNetNS(t) {
			return
		}
		self, err := nsOf("/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		own, err := nsOf(os.Getenv(envOwnNS))
		if err != nil {
			t.Fatal(err)
		}
		if self != own {
			t.Fatalf("child test is not in the namespace %s made for it", os.Getenv(envOwnNS))
		}
		// Every thread, not only the main one.
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, task := range tasks {
			id, err := nsOf("/proc/self/task/" + task.Name() + "/ns/net")
			if err == nil && id != self {
				t.Errorf("thread %s in another namespace", task.Name())
			}
		}
		w := NewCurrentWorld(t)
		if w.Node.Path() != os.Getenv(envOwnNS) {
			t.Errorf("current node adopted %s, want %s", w.Node.Path(), os.Getenv(envOwnNS))
		}
		if err := w.Node.Ping(WWW4, 3e9); err != nil {
			t.Error(err)
		}
		// A plain socket of this process is in the node.
		ifs, err := os.ReadFile("/proc/net/dev")
		if err != nil || !strings.Contains(string(ifs), NodeUplinkIf+":") {
			t.Errorf("/proc/net/dev of the process lacks the node's uplink: %s %v", ifs, err)
		}
	})
}
