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

// Collector exports the file sink's counters:
//
//	arkgw_alerts_file_written_total  records written and fsynced
//	arkgw_alerts_file_dropped_total  records lost (backlog full, write errors, emitted after Close)
//	arkgw_alerts_file_fsyncs_total   fsyncs (fewer than records under load: group commit)
func (s *FileSink) Collector() prometheus.Collector { return fileCollector{s} }

type fileCollector struct{ s *FileSink }

var (
	descFileWritten = prometheus.NewDesc("arkgw_alerts_file_written_total", "Alert records written and fsynced to the alerts file.", nil, nil)
	descFileDropped = prometheus.NewDesc("arkgw_alerts_file_dropped_total", "Alert records the file sink lost.", nil, nil)
	descFileSyncs   = prometheus.NewDesc("arkgw_alerts_file_fsyncs_total", "fsyncs of the alerts file.", nil, nil)
)

func (c fileCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descFileWritten
	ch <- descFileDropped
	ch <- descFileSyncs
}

func (c fileCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descFileWritten, prometheus.CounterValue, float64(c.s.Written()))
	ch <- prometheus.MustNewConstMetric(descFileDropped, prometheus.CounterValue, float64(c.s.Dropped()))
	ch <- prometheus.MustNewConstMetric(descFileSyncs, prometheus.CounterValue, float64(c.s.Syncs()))
}
