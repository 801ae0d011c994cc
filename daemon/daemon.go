package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/alertsum"
	"github.com/arkgw/arkgw/outputs"
	"github.com/arkgw/arkgw/store"
	"github.com/arkgw/arkgw/traffic"
)

// DefaultSocket is where the CLI finds the daemon.
const DefaultSocket = "/run/arkgw/arkgw.sock"

// Config is what `arkgw run` passes in.
type Config struct {
	Policy *Policy
	Socket string // Unix socket for the CLI (root-only); "" = DefaultSocket
	Logger hclog.Logger
	// NewRunner builds the kernel side once the store and alert sink exist.
	// Tests inject fakes; cmd/arkgw passes the real one.
	NewRunner func(RunnerDeps) (Runner, error)
	Clock     Clock
	// SampleInterval is how often the owner page's traffic graphs are
	// sampled (0 = traffic.DefaultInterval, 10 s); tests shorten it.
	SampleInterval time.Duration
}

// RunnerDeps are what the daemon hands to the Runner it builds.
type RunnerDeps struct {
	Policy   *Policy
	Store    *store.Store
	Alerts   alert.Sink
	Registry *prometheus.Registry
	Logger   hclog.Logger
	// Stop lets a component (the alerter's enforcement, quota) stop an
	// experiment with a reason.
	Stop func(id, reason string)
	// Lookup gives title and contacts for alerts.
	Lookup func(id string) (title string, contacts []string, ok bool)
}

// Daemon is a running arkgw.
type Daemon struct {
	log        hclog.Logger
	cfg        Config
	mgr        *Manager
	auth       *webAuth
	alertsPath string
	flows      http.Handler
	registry   *prometheus.Registry
	traffic    *traffic.Store    // the graphs' series
	alertSum   *alertsum.Summary // alerts aggregated for the page

	cpuMu sync.Mutex
	cpu   map[string]cpuSample // CPU use over the last sample, per running experiment
	ship  *outputs.Shipper     // nil when [outputs] is off
}

// Run is `arkgw run`: it returns when ctx ends (SIGTERM) after a clean
// shutdown. Experiments keep running across a daemon restart.
func Run(ctx context.Context, cfg Config, reload <-chan *Policy) error {
	d := &Daemon{log: cfg.Logger, cfg: cfg}
	if d.log == nil {
		d.log = hclog.NewNullLogger()
	}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	pol := cfg.Policy
	if err := os.MkdirAll(pol.StateDir(), 0o755); err != nil {
		return fmt.Errorf("state dir %s: %w", pol.StateDir(), err)
	}
	st, err := store.Open(pol.StateDir())
	if err != nil {
		return err
	}
	defer st.Close()

	d.alertsPath = pol.AlertsFile()
	stream, err := alert.OpenStream(alert.StreamConfig{
		File: d.alertsPath, Syslog: pol.SyslogTarget(), Node: pol.NodeName(), Logger: d.log,
	})
	if err != nil {
		return err
	}
	defer stream.Close()

	d.registry = prometheus.NewRegistry()
	d.registry.MustRegister(stream.Collectors()...)
	d.alertSum = alertsum.New()
	now := time.Now
	if cfg.Clock != nil {
		now = cfg.Clock.Now
	}
	started := now()
	if d.traffic, err = traffic.Open(st.DB(), cfg.SampleInterval); err != nil {
		return err
	}
	var mgr *Manager
	// Alerts reach the file, the page's summary and the per-experiment count.
	sink := alert.SinkFunc(func(r alert.Record) {
		stream.Emit(r)
		d.alertSum.Add(r)
		if r.Experiment != "" && mgr != nil {
			mgr.CountAlert(r.Experiment, 1)
		}
	})
	deps := RunnerDeps{
		Policy: pol, Store: st, Alerts: sink, Registry: d.registry, Logger: d.log,
		// The manager owns these stops: shutdown waits for them.
		Stop: func(id, reason string) {
			if mgr == nil {
				d.log.Error("stop requested before the manager exists; not stopped", "experiment", id, "reason", reason)
				return
			}
			mgr.StopAsync(id, reason)
		},
		Lookup: func(id string) (string, []string, bool) {
			x, err := st.Get(id)
			if err != nil {
				return "", nil, false
			}
			var cs []string
			for _, c := range x.Experimenters {
				cs = append(cs, fmt.Sprintf("%s <%s>", c.Name, c.Email))
			}
			return x.Title, cs, true
		},
	}
	runner, err := cfg.NewRunner(deps)
	if err != nil {
		return err
	}
	if c, ok := runner.(interface{ Close() error }); ok {
		defer c.Close()
	}
	if fh, ok := runner.(interface{ FlowsHandler() http.Handler }); ok {
		d.flows = fh.FlowsHandler()
	}
	if d.ship, err = d.newShipper(pol, st, sink, runner); err != nil {
		return err
	}
	mopts := Options{Logger: d.log, Store: st, Runner: runner, Policy: pol, Clock: cfg.Clock, Alerts: sink}
	if d.ship != nil {
		mopts.Outputs = d.ship
		d.registry.MustRegister(d.ship.Collector())
	}
	mgr = NewManager(mopts)
	d.mgr = mgr
	d.registry.MustRegister(newCollector(mgr))

	if d.auth, err = newWebAuth(pol.WebPasswordHash()); err != nil {
		return err
	}
	if err := mgr.Recover(ctx); err != nil {
		return fmt.Errorf("recover state: %w", err)
	}
	if d.ship != nil {
		d.finishCompleted(st)
	}

	g, gctx := errgroup.WithContext(ctx)
	// Runners with background loops (alerter, accounting) run under the group.
	if r, ok := runner.(interface{ Run(context.Context) error }); ok {
		g.Go(func() error { return r.Run(gctx) })
	}
	g.Go(func() error { return mgr.Run(gctx) })
	g.Go(func() error {
		if err := d.seedAlerts(gctx, started); err != nil {
			d.log.Warn("alerts file not read for the owner page's summary", "file", d.alertsPath, "error", err)
		}
		return nil
	})
	g.Go(func() error {
		return d.traffic.Run(gctx, d.sampleCounters, now, func(err error) { d.log.Warn("save traffic sample", "error", err) })
	})
	if d.ship != nil {
		g.Go(func() error { return d.ship.Run(gctx) })
	}

	ul, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	metrics := promhttp.HandlerFor(d.registry, promhttp.HandlerOpts{})
	unixSrv := &http.Server{Handler: d.withMetrics(d.apiHandler(), metrics), ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error { return serve(gctx, unixSrv, ul) })

	if addr := pol.WebListen(); addr != "" {
		if err := checkWebExposure(addr, pol.WebPasswordHash()); err != nil {
			return err
		}
		webSrv, err := d.webServer(pol)
		if err != nil {
			return err
		}
		d.auth.tls = webSrv.TLSConfig != nil
		wl, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("node.toml: web.listen %q: %w", addr, err)
		}
		scheme := "http"
		if d.auth.tls {
			scheme = "https"
			wl = tls.NewListener(wl, webSrv.TLSConfig)
		}
		d.log.Info("owner page listening", "url", scheme+"://"+wl.Addr().String()+"/")
		g.Go(func() error { return serve(gctx, webSrv, wl) })
	}
	if reload != nil {
		g.Go(func() error {
			for {
				select {
				case <-gctx.Done():
					return nil
				case p := <-reload:
					if err := mgr.Reload(gctx, p); err != nil {
						d.log.Error("reload failed; previous rules stay in force", "error", err)
					}
				}
			}
		})
	}
	d.log.Info("arkgw running", "node", pol.NodeName(), "state_dir", pol.StateDir(), "socket", cfg.Socket)
	err = g.Wait()
	d.log.Info("arkgw stopped; experiments keep running and are re-adopted at the next start")
	return err
}

func (d *Daemon) withMetrics(api, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", api)
	mux.Handle("GET /metrics", metrics)
	return mux
}

func serve(ctx context.Context, srv *http.Server, l net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-errc
		return nil
	}
}

// listenUnix makes the CLI socket, root-only: its permissions are the API's
// authentication.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir %s: %w", filepath.Dir(path), err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another arkgw is already running", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// checkWebExposure refuses to serve the page without a password anywhere
// but loopback.
func checkWebExposure(addr, hash string) error {
	if hash != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("node.toml: web.listen %q: %v", addr, err)
	}
	ip := net.ParseIP(host)
	if host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("node.toml: web.listen %q is not a loopback address and web.password_hash is empty; set a password hash or listen on 127.0.0.1", addr)
}
