# netdoctor: the project's vocabulary. Each target is a one-liner in the README.
GO      ?= go
BIN     := $(CURDIR)/bin
LABK8S  := $(BIN)/netdoctor-k8s
export NETDOCTOR_K8S_BIN := $(LABK8S)
export NETDOCTOR_BIN := $(BIN)/netdoctor
TEST_TIMEOUT ?= 60m

.PHONY: all build labbins test unit lint bench demo clean

all: build

## build: the netdoctor binary (also kubectl-netdoctor)
build:
	$(GO) build -o $(BIN)/netdoctor ./cmd/netdoctor
	ln -sf netdoctor $(BIN)/kubectl-netdoctor

## labbins: the lab's real Kubernetes binaries (one multi-call binary), from their Go modules
labbins:
	cd labk8s && $(GO) build -o $(LABK8S) .

## test: the whole test suite (root tests and the lab end to end included); one package at
## a time (-p 1): several packages bring up a lab, and labs running side by side on 2 cores
## made their timing-sensitive checks flaky. The cluster end to end runs once more with
## kube-proxy in nftables mode (the lab's own e2e covers both modes in one run).
test: build labbins
	$(GO) vet ./...
	$(GO) test -count=1 -p 1 -timeout $(TEST_TIMEOUT) ./...
	NETDOCTOR_E2E_PROXY_MODE=nftables $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./internal/cluster/e2e/

## unit: tests that need neither root nor the lab binaries
unit:
	$(GO) test -short -count=1 ./...

## lint: gofmt, go vet, golangci-lint
lint:
	@test -z "$$(gofmt -l cmd internal labk8s)" || (gofmt -l cmd internal labk8s; exit 1)
	$(GO) vet ./...
	golangci-lint run ./...

## bench: benchmarks of docs/performance.md
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./...

## demo: build everything, start the lab, show the diagnosis of every seed fault, tear down
demo: build labbins
	$(BIN)/netdoctor lab demo

clean:
	-$(BIN)/netdoctor lab down 2>/dev/null
	rm -rf $(BIN)
