# arkgw — see README.md. `make help` lists the targets.
GO        ?= go
BIN       ?= bin
PKGS      ?= ./...
TESTFLAGS ?= -count=1 -timeout 25m
export CGO_ENABLED ?= 0

.PHONY: deps help build install test test-system test-unit test-fuzz bench demo cross lint rootfs image clean cleanup \
	bench-gateway bench-bandwidth bench-dns bench-alerts bench-sandbox bench-start bench-pcap bench-flows bench-netlab

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

build: ## build bin/arkgw, bin/arkgw-init, bin/pcap and bin/arkprobe (static, CGO off)
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/arkgw ./cmd/arkgw
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/arkgw-init ./cmd/arkgw-init
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/pcap ./cmd/pcap
	$(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/arkprobe ./cmd/arkprobe

deps: ## install the Debian packages tests use (root; skips what is there)
	@./scripts/deps.sh test

test: deps ## all tests; privileged netlab tests need root (CI runs as root)
	$(GO) vet $(PKGS)
	$(GO) test $(TESTFLAGS) -p 2 $(PKGS)
	$(MAKE) test-fuzz

test-system: deps ## the node as it runs: built binaries as their own processes, config on disk, CLI over the socket (root)
	$(GO) test $(TESTFLAGS) -run '^TestPrivilegedSystem' -v ./systest/

test-unit: ## tests that need no root (privileged ones skip)
	$(GO) test -count=1 -short -skip '^TestPrivileged' $(PKGS)

test-fuzz: ## short runs of every fuzz target
	@./scripts/fuzz-all.sh 10s

bench: bench-gateway bench-bandwidth bench-dns bench-alerts bench-sandbox bench-start bench-pcap bench-flows ## every benchmark (root; needs iperf3, dnsperf, ...)

bench-gateway: ## TCP throughput with a 1,000-entry allowlist vs none; 10k apply time
	@./scripts/bench.sh gateway ./gateway TestBenchGateway
bench-bandwidth: ## wire-rate accuracy at 1/10/100 Mbit/s vs the CNI approach
	@./scripts/bench.sh bandwidth ./gateway/shape TestBenchBandwidth
bench-dns: ## DNS proxy vs dnsmasq and unbound (dnsperf)
	@./scripts/bench.sh dns ./dnsproxy TestBenchDNS
bench-alerts: ## highest drop rate followed with zero overruns vs ulogd2
	@./scripts/bench.sh alerts ./nflog TestBenchAlerts
bench-sandbox: ## sandbox start latency vs bubblewrap and crun
	@./scripts/bench.sh sandbox ./sandbox TestBenchSandbox
bench-start: ## submit-to-first-instruction latency, daemon RSS at 100 experiments
	@./scripts/bench.sh start ./runner TestBenchStart
bench-pcap: ## capture ratio and CPU per packet vs tcpdump
	@./scripts/bench.sh pcap ./pcapstream TestBenchPcap
bench-flows: ## flow records per second, lookup time over 1M flows
	@./scripts/bench.sh flows ./flowlog TestBenchFlows
bench-netlab: ## netlab world build/teardown and program start costs
	@./scripts/bench.sh netlab ./netlab TestBenchNetlab

demo: build ## a netlab node with a fake Internet, the daemon, two experiments, the page, alerts
	./scripts/demo.sh

cross: ## CGO_ENABLED=0 builds for linux amd64, arm64, arm (armv7)
	GOOS=linux GOARCH=amd64 $(GO) build -o /dev/null ./...
	GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./...
	GOOS=linux GOARCH=arm GOARM=7 $(GO) build -o /dev/null ./...

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

rootfs: build ## a small container root for tests and the demo (ROOTFS=dir)
	root=$${ROOTFS:-/var/lib/arkgw/containers/ark-2026.1}; ./scripts/rootfs.sh $$root && \
	  install -D -m 0755 $(BIN)/arkprobe $$root/usr/local/bin/arkprobe

PREFIX  ?= /usr/local
DESTDIR ?=
install: build ## install arkgw, arkgw-init, pcap, the systemd unit and a commented node.toml (never overwritten); PREFIX, DESTDIR
	./scripts/install.sh "$(BIN)" "$(DESTDIR)" "$(PREFIX)"

image: build ## the standard container image (root; IMAGE_VERSION=ark-2026.2 IMAGE_DIR=bin/images)
	./$(BIN)/arkgw container build $${IMAGE_VERSION:-ark-2026.2} -o $${IMAGE_DIR:-$(BIN)/images} --pcap $(BIN)/pcap

cleanup: build ## remove kernel state of experiments no longer running (daemon stopped)
	./$(BIN)/arkgw cleanup || true

clean: ## remove build outputs
	rm -rf $(BIN)
