package nflog

import "github.com/prometheus/client_golang/prometheus"

// Collector exports the alerter's counters for Prometheus. Register it on
// your own registry; nothing is registered globally.
//
//	arkgw_nflog_messages_total           log messages received from the kernel
//	arkgw_nflog_lost_total{reason}       packets whose details were lost: seq_gap, queue_full
//	arkgw_nflog_enobufs_total            socket overruns
//	arkgw_nflog_foreign_total            messages without an arkgw prefix
//	arkgw_nflog_decode_errors_total      packets that did not decode
//	arkgw_nflog_records_total            alert records emitted
//	arkgw_nflog_open_aggregates          open aggregates now
func (a *Alerter) Collector() prometheus.Collector { return collector{a} }

type collector struct{ a *Alerter }

var (
	descMessages = prometheus.NewDesc("arkgw_nflog_messages_total", "NFLOG messages received from the kernel.", []string{"group"}, nil)
	descLost     = prometheus.NewDesc("arkgw_nflog_lost_total", "Packets logged by the kernel whose details the alerter lost, by reason.", []string{"group", "reason"}, nil)
	descNoBufs   = prometheus.NewDesc("arkgw_nflog_enobufs_total", "NFLOG socket receive overruns (ENOBUFS).", []string{"group"}, nil)
	descForeign  = prometheus.NewDesc("arkgw_nflog_foreign_total", "NFLOG messages without an arkgw prefix (ignored).", []string{"group"}, nil)
	descDecode   = prometheus.NewDesc("arkgw_nflog_decode_errors_total", "Logged packets that did not decode.", []string{"group"}, nil)
	descRecords  = prometheus.NewDesc("arkgw_nflog_records_total", "Alert records emitted by the alerter.", []string{"group"}, nil)
	descOpen     = prometheus.NewDesc("arkgw_nflog_open_aggregates", "Open alert aggregates.", []string{"group"}, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMessages, descLost, descNoBufs, descForeign, descDecode, descRecords, descOpen} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.a.Stats()
	group := itoa(c.a.cfg.Group)
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{group}, labels...)...)
	}
	counter(descMessages, s.Received)
	counter(descLost, s.SeqLost, "seq_gap")
	counter(descLost, s.QueueDrops, "queue_full")
	counter(descNoBufs, s.NoBufs)
	counter(descForeign, s.Foreign)
	counter(descDecode, s.DecodeErrors)
	counter(descRecords, s.Records)
	ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(s.Open), group)
}

func itoa(v uint16) string {
	if v == 0 {
		return "0"
	}
	var b [5]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}
