package pcapstream

import "github.com/prometheus/client_golang/prometheus"

// Metrics (all labelled experiment="<id>"):
//
//	arkgw_pcap_readers                          gauge   readers connected now
//	arkgw_pcap_capturing                        gauge   1 while the AF_PACKET socket is open
//	arkgw_pcap_captures_total                   counter times the socket was opened
//	arkgw_pcap_connections_total                counter connections accepted
//	arkgw_pcap_refused_total                    counter connections refused (bad request, too many readers, capture failed)
//	arkgw_pcap_captured_packets_total           counter packets read from the socket
//	arkgw_pcap_delivered_packets_total          counter packets written to readers (one per reader)
//	arkgw_pcap_reader_dropped_packets_total     counter packets lost by readers with full queues (one per reader)
//	arkgw_pcap_kernel_dropped_packets_total     counter packets the socket lost (PACKET_STATISTICS)
var (
	descReaders    = metricDesc("readers", "Pcap readers connected now.")
	descCapturing  = metricDesc("capturing", "1 while the capture socket is open (only while a reader is connected).")
	descCaptures   = metricDesc("captures_total", "Times the capture socket was opened.")
	descConns      = metricDesc("connections_total", "Connections accepted on the pcap socket.")
	descRefused    = metricDesc("refused_total", "Connections refused: bad request, too many readers, or capture unavailable.")
	descCaptured   = metricDesc("captured_packets_total", "Packets read from the capture socket.")
	descDelivered  = metricDesc("delivered_packets_total", "Packets written to readers, counted once per reader.")
	descDropped    = metricDesc("reader_dropped_packets_total", "Packets lost by slow readers (queue full), counted once per reader.")
	descKernelDrop = metricDesc("kernel_dropped_packets_total", "Packets the capture socket lost (kernel PACKET_STATISTICS).")
)

func metricDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc("arkgw_pcap_"+name, help, []string{"experiment"}, nil)
}

// Describe implements prometheus.Collector.
func (s *Server) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReaders, descCapturing, descCaptures, descConns, descRefused, descCaptured, descDelivered, descDropped, descKernelDrop} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *Server) Collect(ch chan<- prometheus.Metric) {
	s.pollKernelDrops()
	st := s.Stats()
	id := s.cfg.Experiment
	capturing := 0.0
	if st.Capturing {
		capturing = 1
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, id)
	}
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), id)
	}
	gauge(descReaders, float64(len(st.Readers)))
	gauge(descCapturing, capturing)
	counter(descCaptures, st.Captures)
	counter(descConns, st.Connections)
	counter(descRefused, st.Refused)
	counter(descCaptured, st.Captured)
	counter(descDelivered, st.Delivered)
	counter(descDropped, st.Dropped)
	counter(descKernelDrop, st.KernelDropped)
}
