package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/arkgw/arkgw/store"
)

// collector exports the daemon's own view: experiments by state, and per
// running experiment its bytes today and alerts. Components (DNS proxy,
// alerter, capture) register their own collectors.
type collector struct {
	mgr    *Manager
	states *prometheus.Desc
	bytes  *prometheus.Desc
	alerts *prometheus.Desc
	up     *prometheus.Desc
}

func newCollector(m *Manager) *collector {
	return &collector{
		mgr:    m,
		states: prometheus.NewDesc("arkgw_experiments", "Experiments by state.", []string{"state"}, nil),
		bytes:  prometheus.NewDesc("arkgw_experiment_bytes_today", "Bytes an experiment moved today (UTC), by direction.", []string{"experiment", "direction"}, nil),
		alerts: prometheus.NewDesc("arkgw_experiment_alerts", "Alerts raised for an experiment.", []string{"experiment"}, nil),
		up:     prometheus.NewDesc("arkgw_up", "1 while the daemon serves.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.states
	ch <- c.bytes
	ch <- c.alerts
	ch <- c.up
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	list, err := c.mgr.store.List()
	if err != nil {
		return
	}
	n := map[string]int{store.Planned: 0, store.Running: 0, store.Completed: 0}
	for _, x := range list {
		n[x.State]++
		if x.State != store.Running {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.alerts, prometheus.CounterValue, float64(x.Alerts), x.ID)
		if st, ok := c.mgr.Status(x.ID); ok {
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.BytesUpToday), x.ID, "up")
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.BytesDownToday), x.ID, "down")
		}
	}
	for s, v := range n {
		ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(v), s)
	}
}
