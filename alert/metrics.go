package alert

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is a Sink that counts the records it sees and a
// prometheus.Collector that exports the counts. Register it on your own
// registry (nothing is registered globally); put it in a Tee with the real
// sinks.
//
//	arkgw_alerts_total{kind,rule}         records emitted
//	arkgw_alert_packets_total{kind,rule}  packets those records stand for
type Metrics struct {
	mu      sync.Mutex
	alerts  map[metricKey]uint64
	packets map[metricKey]uint64

	alertsDesc, packetsDesc *prometheus.Desc
}

type metricKey struct{ kind, rule string }

// NewMetrics returns an empty Metrics.
func NewMetrics() *Metrics {
	return &Metrics{
		alerts:      map[metricKey]uint64{},
		packets:     map[metricKey]uint64{},
		alertsDesc:  prometheus.NewDesc("arkgw_alerts_total", "Alert records emitted, by kind and rule.", []string{"kind", "rule"}, nil),
		packetsDesc: prometheus.NewDesc("arkgw_alert_packets_total", "Packets reported by alert records, by kind and rule.", []string{"kind", "rule"}, nil),
	}
}

// Emit counts r.
func (m *Metrics) Emit(r Record) {
	k := metricKey{r.Kind, r.Rule}
	m.mu.Lock()
	m.alerts[k]++
	m.packets[k] += r.Packets
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.alertsDesc
	ch <- m.packetsDesc
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range m.alerts {
		ch <- prometheus.MustNewConstMetric(m.alertsDesc, prometheus.CounterValue, float64(v), k.kind, k.rule)
	}
	for k, v := range m.packets {
		ch <- prometheus.MustNewConstMetric(m.packetsDesc, prometheus.CounterValue, float64(v), k.kind, k.rule)
	}
}

var (
	_ Sink                 = (*Metrics)(nil)
	_ prometheus.Collector = (*Metrics)(nil)
)
