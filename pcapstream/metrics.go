package pcapstream

import "github.com/prometheus/client_golang/prometheus"

// Metrics (all labelled experiment="<id>"):
//
//	arkgw_pcap_readers                          gauge   readers connected now
//	arkgw_pcap_capturing                        gauge   1 while a reader's AF_PACKET socket is open
//	arkgw_pcap_captures_total                   counter captures opened (one per reader)
//	arkgw_pcap_connections_total                counter connections accepted
//	arkgw_pcap_refused_total                    counter connections refused (bad request, too many readers, capture failed)
//	arkgw_pcap_captured_packets_total           counter packets read from the readers' rings (after their filters, once per reader)
//	arkgw_pcap_delivered_packets_total          counter packets written to readers (once per reader)
//	arkgw_pcap_reader_dropped_packets_total     counter packets the readers' rings lost (PACKET_STATISTICS, once per reader)
//	arkgw_pcap_kernel_dropped_packets_total     counter the same packets (every loss is in a reader's own kernel ring)
//
// descs are one server's metric descriptions. The experiment is a constant
// label, so each experiment's server is its own collector: shared
// descriptions with a variable label made the registry refuse the second
// experiment's ("duplicate metrics collector registration attempted").
type descs struct {
	readers, capturing, captures, conns, refused, captured, delivered, dropped, kernelDrop *prometheus.Desc
}

func newDescs(exp string) *descs {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("arkgw_pcap_"+name, help, nil, prometheus.Labels{"experiment": exp})
	}
	return &descs{
		readers:    d("readers", "Pcap readers connected now."),
		capturing:  d("capturing", "1 while a capture socket is open (each connected reader has one)."),
		captures:   d("captures_total", "Capture sockets opened (one per reader)."),
		conns:      d("connections_total", "Connections accepted on the pcap socket."),
		refused:    d("refused_total", "Connections refused: bad request, too many readers, or capture unavailable."),
		captured:   d("captured_packets_total", "Packets read from the readers' capture rings (after their kernel filters), counted once per reader."),
		delivered:  d("delivered_packets_total", "Packets written to readers, counted once per reader."),
		dropped:    d("reader_dropped_packets_total", "Packets lost by readers that did not keep up (their own ring full, PACKET_STATISTICS), counted once per reader."),
		kernelDrop: d("kernel_dropped_packets_total", "Packets the readers' kernel rings lost: the same packets as reader_dropped (each reader has its own ring)."),
	}
}

func (s *Server) descs() *descs {
	s.descOnce.Do(func() { s.desc = newDescs(s.cfg.Experiment) })
	return s.desc
}

// Describe implements prometheus.Collector.
func (s *Server) Describe(ch chan<- *prometheus.Desc) {
	d := s.descs()
	for _, x := range []*prometheus.Desc{d.readers, d.capturing, d.captures, d.conns, d.refused, d.captured, d.delivered, d.dropped, d.kernelDrop} {
		ch <- x
	}
}

// Collect implements prometheus.Collector.
func (s *Server) Collect(ch chan<- prometheus.Metric) {
	st := s.Stats()
	d := s.descs()
	capturing := 0.0
	if st.Capturing {
		capturing = 1
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge(d.readers, float64(len(st.Readers)))
	gauge(d.capturing, capturing)
	counter(d.captures, st.Captures)
	counter(d.conns, st.Connections)
	counter(d.refused, st.Refused)
	counter(d.captured, st.Captured)
	counter(d.delivered, st.Delivered)
	counter(d.dropped, st.Dropped)
	counter(d.kernelDrop, st.KernelDropped)
}
