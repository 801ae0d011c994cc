package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
)

// Headers of GET .../logs. The body is the whole output file as it was
// when the request arrived, with its Content-Length, so that a client can
// tell a complete copy from a cut one.
const (
	// HeaderOutputDropped: bytes the node's output cap dropped from this
	// stream (known once the experiment has ended; absent before).
	HeaderOutputDropped = "Arkgw-Output-Dropped"
	// HeaderOutputCap: the cap in bytes, when the experiment runs here and
	// its output reached it (output past it is being dropped).
	HeaderOutputCap = "Arkgw-Output-Cap"
)

// outputStatus is the part of the holder's status.json the logs need.
type outputStatus struct {
	Stdout struct {
		Dropped int64 `json:"dropped"`
	} `json:"stdout"`
	Stderr struct {
		Dropped int64 `json:"dropped"`
	} `json:"stderr"`
}

// serveLogs streams an experiment's stdout or stderr file whole.
func (d *Daemon) serveLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := d.mgr.store.Get(id); err != nil {
		writeErr(w, http.StatusNotFound, err)
		return
	}
	name := "stdout"
	if r.URL.Query().Get("stream") == "stderr" {
		name = "stderr"
	}
	dir := d.mgr.ExperimentDir(id)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if b, err := os.ReadFile(filepath.Join(dir, "status.json")); err == nil && len(b) > 0 {
		var st outputStatus
		if json.Unmarshal(b, &st) == nil {
			dropped := st.Stdout.Dropped
			if name == "stderr" {
				dropped = st.Stderr.Dropped
			}
			w.Header().Set(HeaderOutputDropped, strconv.FormatInt(dropped, 10))
		}
	}
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			w.Header().Set("Content-Length", "0")
			return // no output yet
		}
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	size := fi.Size()
	if eff, ok := d.mgr.Effective(id); ok && eff.Limits.OutputMB > 0 && size >= eff.Limits.OutputMB<<20 {
		w.Header().Set(HeaderOutputCap, strconv.FormatInt(eff.Limits.OutputMB<<20, 10))
	}
	// A running experiment's file grows: send the size announced, no more.
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	if n, err := io.CopyN(w, f, size); err != nil {
		d.log.Warn("logs cut short", "experiment", id, "stream", name, "sent", n, "size", size, "error", err)
	}
}

// LogsInfo is what GET .../logs says besides the bytes.
type LogsInfo struct {
	Bytes   int64 // written to the writer: the whole stored output
	Dropped int64 // bytes dropped by the node's output cap; -1 = not known yet (running)
	AtCap   int64 // > 0: the output reached this cap and the rest is being dropped
}

// LogsTo copies an experiment's whole collected stdout (or stderr) to w,
// without a size limit. A copy that ends before the size the daemon
// announced is an error naming both sizes: a cut copy never looks whole.
func (c *Client) LogsTo(id string, stderr bool, w io.Writer) (LogsInfo, error) {
	info := LogsInfo{Dropped: -1}
	q := ""
	if stderr {
		q = "?stream=stderr"
	}
	resp, err := c.get(pathExperiments + "/" + url.PathEscape(id) + "/logs" + q)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	if v := resp.Header.Get(HeaderOutputDropped); v != "" {
		info.Dropped, _ = strconv.ParseInt(v, 10, 64)
	}
	if v := resp.Header.Get(HeaderOutputCap); v != "" {
		info.AtCap, _ = strconv.ParseInt(v, 10, 64)
	}
	info.Bytes, err = io.Copy(w, resp.Body)
	if err != nil {
		if resp.ContentLength >= 0 {
			return info, fmt.Errorf("logs of %s cut after %d of %d bytes: %w", id, info.Bytes, resp.ContentLength, err)
		}
		return info, fmt.Errorf("logs of %s cut after %d bytes: %w", id, info.Bytes, err)
	}
	if resp.ContentLength >= 0 && info.Bytes != resp.ContentLength {
		return info, fmt.Errorf("logs of %s cut after %d of %d bytes", id, info.Bytes, resp.ContentLength)
	}
	return info, nil
}

// Logs returns an experiment's whole collected stdout or stderr (see
// LogsTo to stream it).
func (c *Client) Logs(id string, stderr bool) ([]byte, error) {
	var b bytes.Buffer
	_, err := c.LogsTo(id, stderr, &b)
	return b.Bytes(), err
}
