package redirect

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
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
			"-D -p tcp --orig-dst 169.254.169.254 --orig-port-dst 80", false},
		{"deleted entries are success", netip.MustParseAddrPort("192.168.100.21:32000"),
			"conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted.", 0,
			"-D -p tcp --orig-dst 192.168.100.21 --orig-port-dst 32000", false},
		{"an IPv6 endpoint is flushed in the ipv6 family", netip.MustParseAddrPort("[fd00:ec2::254]:80"),
			"conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.", 1,
			"-f ipv6 -D -p tcp --orig-dst fd00:ec2::254 --orig-port-dst 80", false},
		{"any other failure is an error", netip.MustParseAddrPort("169.254.169.254:80"),
			"conntrack v1.4.7 (conntrack-tools): Operation failed: Permission denied", 1,
			"-D -p tcp --orig-dst 169.254.169.254 --orig-port-dst 80", true},
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
