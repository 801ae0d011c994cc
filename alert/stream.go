package alert

import (
	"errors"
	"fmt"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

// StreamConfig is the node policy's [alerts] output section.
type StreamConfig struct {
	File   string // alerts JSONL file (required)
	Syslog string // "udp://host:port", "tcp://host:port" or "" (off)
	Node   string // hostname field of syslog messages
	FileOptions
	Logger hclog.Logger
}

// Stream is the daemon's alert output: the durable file, optional syslog,
// and counters, behind one Sink. Give Stream to the producers (the NFLOG
// alerter, which forwards DNS refusals too).
type Stream struct {
	File    *FileSink
	Syslog  *SyslogSink // nil when off
	Metrics *Metrics
	sink    Sink
}

// OpenStream opens the outputs; on error nothing is left open.
func OpenStream(cfg StreamConfig) (*Stream, error) {
	if cfg.File == "" {
		return nil, errors.New("alerts: no file configured ([alerts].file)")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	opts := cfg.FileOptions
	if opts.Logger == nil {
		opts.Logger = cfg.Logger
	}
	f, err := NewFileSink(cfg.File, opts)
	if err != nil {
		return nil, err
	}
	s := &Stream{File: f, Metrics: NewMetrics()}
	if cfg.Syslog != "" {
		s.Syslog, err = NewSyslogSink(cfg.Syslog, SyslogOptions{Header: SyslogHeader{Hostname: cfg.Node}, Logger: cfg.Logger})
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("[alerts].syslog: %w", err)
		}
	}
	var syslog Sink
	if s.Syslog != nil {
		syslog = s.Syslog
	}
	s.sink = Tee(f, syslog, s.Metrics)
	return s, nil
}

// Emit sends r to every output. Never blocks on I/O.
func (s *Stream) Emit(r Record) { s.sink.Emit(r) }

// Collectors returns the Prometheus collectors of the stream (register them
// on the daemon's registry).
func (s *Stream) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.Metrics, s.File.Collector()}
}

// Close flushes and closes the outputs: every record Emit accepted is in
// the file when Close returns.
func (s *Stream) Close() error {
	var errs []error
	if s.Syslog != nil {
		errs = append(errs, s.Syslog.Close())
	}
	errs = append(errs, s.File.Close())
	return errors.Join(errs...)
}
