package dnsproxy

import "github.com/prometheus/client_golang/prometheus"

// Collector returns a Prometheus collector of this proxy's counters, labelled
// with the experiment id. Nothing is registered globally: the daemon
// registers it when the experiment starts and unregisters it when it stops.
func (p *Proxy) Collector() prometheus.Collector {
	return &collector{p: p, descs: newDescs(p.cfg.Experiment)}
}

type collector struct {
	p     *Proxy
	descs []metricDesc
}

type metricDesc struct {
	d   *prometheus.Desc
	get func(Stats) uint64
}

func newDescs(exp string) []metricDesc {
	l := prometheus.Labels{"experiment": exp}
	d := func(name, help string, get func(Stats) uint64) metricDesc {
		return metricDesc{prometheus.NewDesc("arkgw_dns_"+name, help, nil, l), get}
	}
	return []metricDesc{
		d("queries_total", "Well-formed DNS queries received.", func(s Stats) uint64 { return s.Queries }),
		d("allowed_total", "Queries for allowed names.", func(s Stats) uint64 { return s.Allowed }),
		d("refused_total", "Queries for names outside the allowlist.", func(s Stats) uint64 { return s.Refused }),
		d("rate_limited_total", "Queries refused by the per-experiment rate limit.", func(s Stats) uint64 { return s.RateLimited }),
		d("upstream_failures_total", "Allowed queries no upstream answered (SERVFAIL).", func(s Stats) uint64 { return s.UpstreamFailures }),
		d("upstream_errors_total", "Failed upstream attempts.", func(s Stats) uint64 { return s.UpstreamErrors }),
		d("cache_hits_total", "Queries answered from the cache.", func(s Stats) uint64 { return s.CacheHits }),
		d("malformed_total", "Unparseable messages.", func(s Stats) uint64 { return s.Malformed }),
		d("mismatched_answers_total", "Upstream answers dropped for an unknown ID or a wrong question.", func(s Stats) uint64 { return s.Mismatched }),
		d("overload_total", "Queries dropped because too many were in flight, or answers dropped because the send buffer stayed full.", func(s Stats) uint64 { return s.Overload }),
		d("tcp_fallbacks_total", "Truncated upstream answers retried over TCP.", func(s Stats) uint64 { return s.TCPFallbacks }),
		d("alerts_dropped_total", "Alerts lost because the alert sink fell behind.", func(s Stats) uint64 { return s.AlertsDropped }),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.descs {
		ch <- m.d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.p.Stats()
	for _, m := range c.descs {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.get(s)))
	}
}
