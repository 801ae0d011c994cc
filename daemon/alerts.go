package daemon

import (
	"errors"
	"os"
	"time"

	"github.com/arkgw/arkgw/alert"
)

// alertOutput is the durable alert stream: the JSONL file, plus syslog when
// the node policy names a collector.
type alertOutput struct {
	file   *alert.FileSink
	syslog *alert.SyslogSink
	sink   alert.Sink
}

func (o *alertOutput) Emit(r alert.Record) { o.sink.Emit(r) }

func (o *alertOutput) Close() error {
	var errs []error
	if o.syslog != nil {
		errs = append(errs, o.syslog.Close())
	}
	return errors.Join(append(errs, o.file.Close())...)
}

func openAlertSink(p *Policy) (*alertOutput, error) {
	f, err := alert.NewFileSink(p.AlertsFile(), alert.FileOptions{})
	if err != nil {
		return nil, err
	}
	out := &alertOutput{file: f, sink: f}
	if target := p.SyslogTarget(); target != "" {
		s, err := alert.NewSyslogSink(target, alert.SyslogOptions{Header: alert.SyslogHeader{Hostname: p.NodeName()}})
		if err != nil {
			f.Close()
			return nil, err
		}
		out.syslog = s
		out.sink = alert.Tee(f, s)
	}
	return out, nil
}

// readAlerts returns the newest max alerts since a time, optionally of one
// experiment, oldest first.
func readAlerts(path string, since time.Time, experiment string, max int) ([]alert.Record, error) {
	var out []alert.Record
	err := alert.ReadFile(path, since, func(r alert.Record, _ []byte) error {
		if experiment != "" && r.Experiment != experiment {
			return nil
		}
		out = append(out, r)
		if len(out) > max {
			out = out[1:]
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return out, err
}
