package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/arkgw/arkgw/store"
)

// Client talks to a running daemon over its Unix socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the daemon at socket ("" = DefaultSocket).
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	return &Client{Socket: socket, hc: &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}},
	}}
}

func (c *Client) do(method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	resp, err := c.send(method, path, rd)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return err
	}
	if len(data) > maxResponse {
		return fmt.Errorf("arkgw: the answer to %s is larger than %d MiB; not read (narrow the query)", path, maxResponse>>20)
	}
	if resp.StatusCode >= 300 {
		var e ErrorResponse
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			if len(e.Conflicts) > 0 {
				return &RefusedError{Conflicts: e.Conflicts}
			}
			return errors.New(e.Error)
		}
		return fmt.Errorf("arkgw: %s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	if out == nil {
		return nil
	}
	if b, ok := out.(*[]byte); ok {
		*b = data
		return nil
	}
	return json.Unmarshal(data, out)
}

// maxResponse bounds the JSON answers the client reads whole (logs are
// streamed, see LogsTo).
const maxResponse = 64 << 20

// send makes one request over the socket.
func (c *Client) send(method, path string, body io.Reader) (*http.Response, error) {
	return c.sendWith(c.hc, method, path, body)
}

func (c *Client) sendWith(hc *http.Client, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequest(method, "http://arkgw"+path, body)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("the arkgw daemon is not running (no socket at %s); start it with 'arkgw run' or 'systemctl start arkgw'", c.Socket)
		}
		if errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("permission denied on %s: the arkgw CLI must run as root", c.Socket)
		}
		return nil, fmt.Errorf("talk to arkgw at %s: %w", c.Socket, err)
	}
	return resp, nil
}

// get GETs path for a streamed body, with no overall timeout (the reader
// may be a pager); an error status is returned as an error (the body is
// closed then).
func (c *Client) get(path string) (*http.Response, error) {
	stream := *c.hc
	stream.Timeout = 0
	resp, err := c.sendWith(&stream, "GET", path, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e ErrorResponse
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return nil, errors.New(e.Error)
	}
	return nil, fmt.Errorf("arkgw: %s: %s", resp.Status, strings.TrimSpace(string(data)))
}

// Submit sends a manifest; dir is the absolute directory its files are in.
func (c *Client) Submit(manifest []byte, name, dir string) (*store.Experiment, error) {
	var x store.Experiment
	err := c.do("POST", pathExperiments, SubmitRequest{Manifest: string(manifest), Name: name, Dir: dir}, &x)
	return &x, err
}

// List returns every experiment.
func (c *Client) List() ([]ExperimentView, error) {
	var v []ExperimentView
	return v, c.do("GET", pathExperiments, nil, &v)
}

// Get returns one experiment.
func (c *Client) Get(id string) (*ExperimentView, error) {
	var v ExperimentView
	return &v, c.do("GET", pathExperiments+"/"+url.PathEscape(id), nil, &v)
}

// Stop stops an experiment (recorded as stopped by staff).
func (c *Client) Stop(id string) (*store.Experiment, error) {
	var x store.Experiment
	return &x, c.do("POST", pathExperiments+"/"+url.PathEscape(id)+"/stop", StopRequest{Reason: store.ReasonStoppedStaff}, &x)
}

// Raw GETs an API path and returns the body (used by `arkgw flows`).
func (c *Client) Raw(path string) ([]byte, error) {
	var b []byte
	return b, c.do("GET", path, nil, &b)
}

// Node asks the daemon where its policy and alerts are.
func (c *Client) Node() (*NodeInfo, error) {
	var out NodeInfo
	if err := c.do("GET", pathNode, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
