package outputs

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

// metrics: the backlog is read from the queue at each scrape, so it is
// right after a restart too.
type metrics struct {
	s        *Shipper
	failures prometheus.Counter
	shipped  prometheus.Counter
	lost     prometheus.Counter
	local    atomic.Int64

	pending, objects, lag, localDesc *prometheus.Desc
}

func newMetrics(s *Shipper) *metrics {
	return &metrics{
		s: s,
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "arkgw_outputs_upload_failures_total",
			Help: "Uploads of result objects that failed (each is retried with backoff)."}),
		shipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "arkgw_outputs_shipped_bytes_total",
			Help: "Bytes of result objects the store confirmed."}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{Name: "arkgw_outputs_lost_objects_total",
			Help: "Queued result objects whose local bytes disappeared before they were shipped."}),
		pending:   prometheus.NewDesc("arkgw_outputs_pending_bytes", "Bytes of results queued but not yet confirmed by the store.", nil, nil),
		objects:   prometheus.NewDesc("arkgw_outputs_pending_objects", "Result objects queued but not yet confirmed by the store.", nil, nil),
		lag:       prometheus.NewDesc("arkgw_outputs_upload_lag_seconds", "Age of the oldest result object not yet confirmed by the store (0 when none waits).", nil, nil),
		localDesc: prometheus.NewDesc("arkgw_outputs_local_bytes", "Bytes of local copies of results (stdout, stderr, summaries) the disk budget counts.", nil, nil),
	}
}

func (m *metrics) setLocal(n int64) { m.local.Store(n) }

// Collector returns the shipper's metrics for the daemon's registry.
func (s *Shipper) Collector() prometheus.Collector { return s.m }

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.failures.Describe(ch)
	m.shipped.Describe(ch)
	m.lost.Describe(ch)
	ch <- m.pending
	ch <- m.objects
	ch <- m.lag
	ch <- m.localDesc
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.failures.Collect(ch)
	m.shipped.Collect(ch)
	m.lost.Collect(ch)
	var pending int64
	var items int
	var lag float64
	m.s.db.View(func(tx *bolt.Tx) error {
		p, n, oldest, err := backlog(tx)
		if err != nil {
			return err
		}
		pending, items = p, n
		if n > 0 {
			lag = max(0, m.s.clock.Now().Sub(oldest).Seconds())
		}
		return nil
	})
	ch <- prometheus.MustNewConstMetric(m.pending, prometheus.GaugeValue, float64(pending))
	ch <- prometheus.MustNewConstMetric(m.objects, prometheus.GaugeValue, float64(items))
	ch <- prometheus.MustNewConstMetric(m.lag, prometheus.GaugeValue, lag)
	ch <- prometheus.MustNewConstMetric(m.localDesc, prometheus.GaugeValue, float64(m.local.Load()))
}
