package redirect

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// fakeConntrack writes a script standing in for the conntrack binary: it
// records its arguments and answers as told.
func fakeConntrack(t *testing.T, output string, status int) (path, argsFile string) {
	t.Helper()
	dir := t.TempDir()
	path = filepath.Join(dir, "conntrack")
	argsFile = filepath.Join(dir, "args")
	script := "#!/bin/sh\necho \"$@\" > '" + argsFile + "'\necho '" + output + "' >&2\nexit " + strconv.Itoa(status) + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, argsFile
}

func TestExecConntrack(t *testing.T) {
	tests := []struct {
		name     string
		dst      netip.AddrPort
		output   string
		status   int
		wantArgs string
		wantErr  bool
	}{
		{"no matching entry (exit 1, 0 deleted) is not an error", netip.MustParseAddrPort("169.254.169.254:80"),
			"conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.", 1,
			"-D -p tcp --orig-dst 169.254.169.254 --orig-port-dst 80 --reply-src 169.254.169.254 --reply-port-src 80", false},
		{"deleted entries are success", netip.MustParseAddrPort("192.168.100.21:32000"),
			"conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted.", 0,
			"-D -p tcp --orig-dst 192.168.100.21 --orig-port-dst 32000 --reply-src 192.168.100.21 --reply-port-src 32000", false},
		{"an IPv6 endpoint is flushed in the ipv6 family", netip.MustParseAddrPort("[fd00:ec2::254]:80"),
			"conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.", 1,
			"-f ipv6 -D -p tcp --orig-dst fd00:ec2::254 --orig-port-dst 80 --reply-src fd00:ec2::254 --reply-port-src 80", false},
		{"any other failure is an error", netip.MustParseAddrPort("169.254.169.254:80"),
			"conntrack v1.4.7 (conntrack-tools): Operation failed: Permission denied", 1,
			"-D -p tcp --orig-dst 169.254.169.254 --orig-port-dst 80 --reply-src 169.254.169.254 --reply-port-src 80", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, argsFile := fakeConntrack(t, tt.output, tt.status)
			err := execConntrack{path: path}.Flush(context.Background(), tt.dst)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			args, _ := os.ReadFile(argsFile)
			if got := strings.TrimSpace(string(args)); got != tt.wantArgs {
				t.Errorf("args %q, want %q", got, tt.wantArgs)
			}
		})
	}
	t.Run("a missing binary is errNoConntrack", func(t *testing.T) {
		err := execConntrack{path: filepath.Join(t.TempDir(), "conntrack")}.Flush(context.Background(), awsV4.Addr)
		if err == nil {
			t.Fatal("no error")
		}
		err = execConntrack{path: "metaguard-no-such-conntrack"}.Flush(context.Background(), awsV4.Addr)
		if !errors.Is(err, errNoConntrack) {
			t.Fatalf("got %v, want errNoConntrack", err)
		}
	})
}

func TestConntrackFlush(t *testing.T) {
	t.Run("install flushes every redirected endpoint once", func(t *testing.T) {
		fx := newFixture(t)
		fx.setAndSync(t, awsV4, awsV6, private, Endpoint{Name: "again", Addr: awsV4.Addr})
		got := fx.sys.flushes.take()
		want := []netip.AddrPort{awsV4.Addr, private.Addr, awsV6.Addr}
		if !slices.Equal(got, want) {
			t.Errorf("flushed %v, want %v", got, want)
		}
	})
	t.Run("a repair of the filter chain alone flushes nothing", func(t *testing.T) {
		fx := newFixture(t)
		fx.setAndSync(t, awsV4)
		fx.sys.flushes.take()
		fx.v4.run("-t filter -F " + FilterChain)
		if err := fx.rec.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := fx.sys.flushes.take(); len(got) != 0 {
			t.Errorf("flushed %v", got)
		}
	})
	t.Run("a missing conntrack binary does not fail the sync", func(t *testing.T) {
		fx := newFixture(t)
		fx.sys.flushes.err = errNoConntrack
		fx.setAndSync(t, awsV4, private)
		if got := fx.sys.flushes.take(); len(got) != 1 {
			t.Errorf("tried %d flushes after learning the binary is missing, want 1", len(got))
		}
		if !fx.rec.Ready() {
			t.Error("not ready")
		}
	})
}
