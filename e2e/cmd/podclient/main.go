package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// result is what podclient prints.
type result struct {
	OK     bool   `json:"ok"`
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`
	Error  string `json:"error,omitempty"`
	// Role and AccessKeyID are set by aws-creds.
	Role        string `json:"role,omitempty"`
	AccessKeyID string `json:"access_key_id,omitempty"`
	// Values and Errors are what the gcp- and azure- commands read, by
	// name, and the errors of the reads that failed, by the same names.
	Values map[string]string `json:"values,omitempty"`
	Errors map[string]string `json:"errors,omitempty"`
	// ElapsedMS is the command's own time, the library's retries included.
	ElapsedMS int64 `json:"elapsed_ms"`
}

// set records one named read; OK ends false if any read failed.
func (r *result) set(name, v string, err error) {
	if r.Values == nil {
		r.Values, r.Errors = map[string]string{}, map[string]string{}
	}
	if err != nil {
		r.Errors[name] = err.Error()
		if s := statusOf(err); s != 0 && r.Status == 0 {
			r.Status = s
		}
		return
	}
	r.Values[name] = v
}

func (r *result) finish() result {
	r.OK = len(r.Errors) == 0
	return *r
}

// command runs one subcommand with its own arguments.
type command func(ctx context.Context, g globals, args []string) (result, error)

type globals struct {
	endpoint   string
	noFallback bool
}

var commands = map[string]command{
	"aws-get":       awsGet,
	"aws-dynamic":   awsDynamic,
	"aws-userdata":  awsUserData,
	"aws-region":    awsRegion,
	"aws-creds":     awsCreds,
	"gcp-facts":     gcpFacts,
	"gcp-get":       gcpGet,
	"gcp-token":     gcpToken,
	"gcp-subscribe": gcpSubscribe,
	"azure-token":   azureToken,
}

const usage = `usage: podclient [-endpoint URL] [-no-fallback] [-timeout D] COMMAND [ARGS]
  aws-get PATH | aws-dynamic PATH | aws-userdata | aws-region | aws-creds
  gcp-facts | gcp-get SUFFIX... | gcp-token [-scope S] | gcp-subscribe SUFFIX
  azure-token [-client-id ID | -object-id ID | -resource-id ID] [-dac] [-max-retries N] [-retry-delay D] [-max-retry-delay D] RESOURCE
  sleep | get URL | probe URL INTERVAL COUNT`

func main() { os.Exit(run(os.Args[1:], os.Stdout)) }

func run(argv []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("podclient", flag.ContinueOnError)
	var g globals
	fs.StringVar(&g.endpoint, "endpoint", "", "AWS IMDS endpoint URL (default: the SDK's, http://169.254.169.254)")
	fs.BoolVar(&g.noFallback, "no-fallback", false, "AWS: fail instead of falling back to IMDSv1 when no token can be had")
	timeout := fs.Duration("timeout", 10*time.Second, "overall deadline")
	if err := fs.Parse(argv); err != nil || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	if workloadCommands[fs.Arg(0)] {
		return runWorkload(fs.Args(), *timeout, stdout)
	}
	cmd, ok := commands[fs.Arg(0)]
	if !ok {
		fmt.Fprintf(os.Stderr, "podclient: unknown command %q\n%s\n", fs.Arg(0), usage)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	start := time.Now()
	res, err := cmd(ctx, g, fs.Args()[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "podclient %s: %v\n%s\n", fs.Arg(0), err, usage)
		return 2
	}
	res.ElapsedMS = time.Since(start).Milliseconds()
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

var errUsage = errors.New("wrong arguments")

func wantArgs(args []string, n int) error {
	if len(args) != n {
		return fmt.Errorf("%w: want %d, got %q", errUsage, n, strings.Join(args, " "))
	}
	return nil
}

// failure keeps the HTTP status the library saw, so a test can tell
// metaguard's 403 from a connection failure.
func failure(err error) result {
	return result{Error: err.Error(), Status: statusOf(err)}
}

// statusOf digs the HTTP status out of each library's error type.
func statusOf(err error) int {
	var se interface{ HTTPStatusCode() int }
	if errors.As(err, &se) {
		return se.HTTPStatusCode()
	}
	return gcpStatus(err)
}

func parseInt32(s string) (int32, error) {
	var v int32
	_, err := fmt.Sscan(s, &v)
	return v, err
}
