package daemon

import (
	"errors"
	"os"
	"time"

	"github.com/arkgw/arkgw/alert"
)

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
