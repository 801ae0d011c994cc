package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/outputs"
	"github.com/arkgw/arkgw/store"
)

// API paths, shared by the server, the CLI client and the page.
const (
	pathExperiments = "/api/v1/experiments"
	pathAlerts      = "/api/v1/alerts"
	pathPause       = "/api/v1/pause"
	pathResume      = "/api/v1/resume"
	pathFlows       = "/api/v1/flows"
	pathNode        = "/api/v1/node"
	maxManifest     = 1 << 20
)

// SubmitRequest is the body of POST /api/v1/experiments.
type SubmitRequest struct {
	Manifest string `json:"manifest"` // the manifest's TOML text
	Name     string `json:"name"`     // its file name, for messages
	Dir      string `json:"dir"`      // absolute directory that files = ... is relative to
}

// ErrorResponse is every API error body.
type ErrorResponse struct {
	Error     string   `json:"error"`
	Conflicts []string `json:"conflicts,omitempty"`
}

// ExperimentView is an experiment as the API shows it: the record plus the
// live status when it runs.
type ExperimentView struct {
	store.Experiment
	Live *Status `json:"live,omitempty"`
	// Outputs: whether the results were shipped to the object store
	// (absent when [outputs] is off or the shipper never saw it).
	Outputs *outputs.Progress `json:"outputs,omitempty"`
}

// StopRequest is the optional body of POST .../stop.
type StopRequest struct {
	Reason string `json:"reason"`
}

// DecodeSubmit reads and checks a submit request body (untrusted bytes).
func DecodeSubmit(r io.Reader) (*SubmitRequest, error) {
	dec := json.NewDecoder(io.LimitReader(r, maxManifest+4096))
	dec.DisallowUnknownFields()
	var req SubmitRequest
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("submit request: not JSON of the form {\"manifest\":..., \"name\":..., \"dir\":...}: %v", err)
	}
	if dec.More() {
		return nil, errors.New("submit request: trailing data after the JSON object")
	}
	if strings.TrimSpace(req.Manifest) == "" {
		return nil, errors.New("submit request: manifest is empty; send the manifest's TOML text")
	}
	if len(req.Manifest) > maxManifest {
		return nil, fmt.Errorf("submit request: manifest is larger than %d bytes", maxManifest)
	}
	if req.Name == "" {
		req.Name = "manifest.toml"
	}
	req.Name = filepath.Base(req.Name)
	if req.Dir != "" && !filepath.IsAbs(req.Dir) {
		return nil, fmt.Errorf("submit request: dir %q must be an absolute path", req.Dir)
	}
	return &req, nil
}

// apiHandler serves the CLI's JSON API, on the root-only Unix socket only:
// its permissions are the authentication. The web listener serves the
// page's routes (webHandler), never this.
func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+pathExperiments, d.handleList)
	mux.HandleFunc("POST "+pathExperiments, d.handleSubmit)
	mux.HandleFunc("GET "+pathExperiments+"/{id}", d.handleGet)
	mux.HandleFunc("POST "+pathExperiments+"/{id}/stop", d.handleStop)
	mux.HandleFunc("GET "+pathExperiments+"/{id}/logs", d.handleLogs)
	mux.HandleFunc("GET "+pathAlerts, d.handleAlerts)
	mux.HandleFunc("POST "+pathPause, d.handlePause)
	mux.HandleFunc("POST "+pathResume, d.handleResume)
	mux.HandleFunc("GET "+pathNode, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.mgr.Policy().Info())
	})
	mux.HandleFunc("GET /api/v1/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": Version})
	})
	if d.flows != nil {
		mux.Handle("GET "+pathFlows, d.flows)
	}
	mux.HandleFunc("GET "+pathExperiments+"/{id}/traffic", d.handleTraffic)
	mux.HandleFunc("GET "+pathTraffic, d.handleNodeTraffic)
	return mux
}

// Version is set by cmd/arkgw.
var Version = "dev"

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	resp := ErrorResponse{Error: err.Error()}
	var ref *RefusedError
	if errors.As(err, &ref) {
		resp.Error = "refused by node policy"
		resp.Conflicts = ref.Conflicts
	}
	writeJSON(w, code, resp)
}

func (d *Daemon) views() ([]ExperimentView, error) {
	list, err := d.mgr.store.List()
	if err != nil {
		return nil, err
	}
	out := make([]ExperimentView, 0, len(list))
	for _, x := range list {
		v := ExperimentView{Experiment: *x}
		if st, ok := d.mgr.Status(x.ID); ok {
			v.Live = &st
		}
		v.Outputs = d.outputsOf(x.ID)
		out = append(out, v)
	}
	return out, nil
}

func (d *Daemon) handleList(w http.ResponseWriter, r *http.Request) {
	v, err := d.views()
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (d *Daemon) handleGet(w http.ResponseWriter, r *http.Request) {
	x, err := d.mgr.store.Get(r.PathValue("id"))
	if err != nil {
		writeErr(w, http.StatusNotFound, err)
		return
	}
	v := ExperimentView{Experiment: *x}
	if st, ok := d.mgr.Status(x.ID); ok {
		v.Live = &st
	}
	v.Outputs = d.outputsOf(x.ID)
	writeJSON(w, http.StatusOK, v)
}

func (d *Daemon) handleSubmit(w http.ResponseWriter, r *http.Request) {
	req, err := DecodeSubmit(r.Body)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	x, err := d.mgr.Submit([]byte(req.Manifest), req.Name, req.Dir)
	if err != nil {
		var ref *RefusedError
		if errors.As(err, &ref) {
			writeErr(w, http.StatusUnprocessableEntity, err)
			return
		}
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusCreated, x)
}

func (d *Daemon) handleStop(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req StopRequest
	if r.Body != nil {
		json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req)
	}
	reason := store.ReasonStoppedStaff
	if req.Reason == store.ReasonStoppedOwner {
		reason = store.ReasonStoppedOwner
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := d.mgr.Stop(ctx, id, reason); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, store.ErrNotFound) {
			code = http.StatusNotFound
		}
		writeErr(w, code, err)
		return
	}
	x, _ := d.mgr.store.Get(id)
	writeJSON(w, http.StatusOK, x)
}

// handleLogs streams an experiment's output whole (logs.go).
func (d *Daemon) handleLogs(w http.ResponseWriter, r *http.Request) { d.serveLogs(w, r) }

func (d *Daemon) handleAlerts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Time
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("since %q: want RFC 3339 time", s))
			return
		}
		since = t
	}
	recs, err := d.recentAlerts(since, q.Get("experiment"), 1000)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, recs)
}

func (d *Daemon) handlePause(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 60*time.Second)
	defer cancel()
	if err := d.mgr.StopAll(ctx, store.ReasonStoppedOwner); err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"paused": true})
}

func (d *Daemon) handleResume(w http.ResponseWriter, r *http.Request) {
	if err := d.mgr.Resume(); err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"paused": false})
}

// recentAlerts reads the alerts file, newest last, at most max records.
func (d *Daemon) recentAlerts(since time.Time, experiment string, max int) ([]alert.Record, error) {
	return readAlerts(d.alertsPath, since, experiment, max)
}
