package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// The subcommands a container of the e2e node's workload image runs, where
// podclient is the only program (no shell, no curl): its main process
// (sleep, probe) and plain HTTP requests (get) run through kubectl exec.

// workloadCommands are dispatched by runWorkload.
var workloadCommands = map[string]bool{"sleep": true, "get": true, "probe": true}

// maxBody bounds what get and probe read of an answer.
const maxBody = 64 << 10

func runWorkload(args []string, timeout time.Duration, stdout io.Writer) int {
	switch {
	case args[0] == "sleep" && len(args) == 1:
		waitForSignal()
		return 0
	case args[0] == "get" && len(args) == 2:
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return encode(stdout, get(ctx, args[1]))
	case args[0] == "probe" && len(args) == 4:
		interval, err := time.ParseDuration(args[2])
		count, cerr := strconv.Atoi(args[3])
		if err != nil || cerr != nil || interval <= 0 || count <= 0 {
			fmt.Fprintln(os.Stderr, "usage: podclient probe URL INTERVAL COUNT")
			return 2
		}
		probe(args[1], interval, count, stdout)
		// A container whose main process exits is restarted, which would
		// start the count again: stay until the pod is deleted.
		waitForSignal()
		return 0
	}
	fmt.Fprintf(os.Stderr, "podclient: usage: sleep | get URL | probe URL INTERVAL COUNT\n")
	return 2
}

func waitForSignal() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
}

// get is one plain HTTP GET (no SDK, no retries): status and body as the
// container saw them, or the connection error.
func get(ctx context.Context, url string) result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return result{Error: err.Error()}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return result{Error: err.Error()}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	res := result{OK: resp.StatusCode == http.StatusOK, Status: resp.StatusCode, Body: string(body)}
	if err != nil {
		res.OK, res.Error = false, err.Error()
	}
	return res
}

// probe GETs url count times, interval apart, each with a deadline of one
// interval (at least a second), and prints one JSON line per attempt with
// its time: a test reads them from the container's log to see every answer
// the workload got while something changed on the node.
func probe(url string, interval time.Duration, count int, stdout io.Writer) {
	enc := json.NewEncoder(stdout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := range count {
		ctx, cancel := context.WithTimeout(context.Background(), max(interval, time.Second))
		res := get(ctx, url)
		cancel()
		_ = enc.Encode(struct {
			N    int    `json:"n"`
			Time string `json:"time"`
			result
		}{i, time.Now().UTC().Format(time.RFC3339Nano), res})
		<-tick.C
	}
}

func encode(w io.Writer, res result) int {
	if err := json.NewEncoder(w).Encode(res); err != nil {
		return 1
	}
	return 0
}
