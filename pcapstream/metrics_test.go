package pcapstream

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every running experiment has a pcap server; the daemon registers each in
// one registry. The second must not be refused as a duplicate.
func TestCollectorsOfTwoExperimentsRegister(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	for _, id := range []string{"x1", "x2"} {
		if err := reg.Register(&Server{cfg: Config{Experiment: id}}); err != nil {
			t.Fatalf("register the pcap collector of %s: %v", id, err)
		}
	}
}
