//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"metaguard.dev/metaguard/deploy/image/imagebuild"
)

// TestNodeImageArchive opens the archive make image wrote (the one the
// node tests run) and checks what the DaemonSet and the cleanup DaemonSet
// need from it at run time: both iptables back ends and conntrack from
// Debian, the wrapper and its links, the binary make built, a shell and
// the few tools the wrapper runs, sleep for the cleanup pod, and the
// entrypoint; and that it is slim (no apt lists, no manuals).
func TestNodeImageArchive(t *testing.T) {
	images, err := imagebuild.ReadOCIArchive(metaguardImageArchive, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(images) != 1 || !strings.HasPrefix(images[0].Ref, "docker.io/library/metaguard:") {
		t.Fatalf("images %v, want one named docker.io/library/metaguard:<version>", images)
	}
	img := images[0].Image
	files := map[string]*tar.Header{}
	var binary, wrapper []byte
	spec := imagebuild.MetaguardSpec
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + strings.TrimSuffix(filepath.Clean(hdr.Name), "/")
		files[name] = hdr
		switch name {
		case spec.Binary:
			binary, _ = io.ReadAll(tr)
		case spec.Wrapper:
			wrapper, _ = io.ReadAll(tr)
		}
	}
	for _, f := range []struct{ path, want string }{
		{spec.Binary, "../bin/metaguard"},
		{spec.Wrapper, "../deploy/image/iptables-wrapper"},
	} {
		want, err := os.ReadFile(f.want)
		if err != nil {
			t.Fatal(err)
		}
		got := binary
		if f.path == spec.Wrapper {
			got = wrapper
		}
		if !bytes.Equal(got, want) || files[f.path].FileInfo().Mode().Perm() != 0o755 {
			t.Errorf("%s is not %s with mode 0755", f.path, f.want)
		}
	}
	for _, name := range spec.Links {
		if h := files["/usr/local/sbin/"+name]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "iptables-wrapper" {
			t.Errorf("/usr/local/sbin/%s is not a link to iptables-wrapper: %+v", name, h)
		}
	}
	for _, p := range []string{
		"/usr/sbin/iptables-nft", "/usr/sbin/iptables-nft-save", "/usr/sbin/iptables-nft-restore",
		"/usr/sbin/ip6tables-nft", "/usr/sbin/iptables-legacy", "/usr/sbin/iptables-legacy-save",
		"/usr/sbin/ip6tables-legacy-restore", "/usr/sbin/xtables-nft-multi", "/usr/sbin/xtables-legacy-multi",
		"/usr/sbin/conntrack", "/bin", "/usr/bin/sh", "/usr/bin/dash", "/usr/bin/basename", "/usr/bin/grep", "/usr/bin/cat",
		"/usr/bin/mv", "/usr/bin/rm", "/usr/bin/sleep", "/usr/share/doc/iptables/copyright",
	} {
		if files[p] == nil {
			t.Errorf("%s is missing", p)
		}
	}
	for p := range files {
		if strings.HasPrefix(p, "/var/lib/apt/lists/") || strings.HasPrefix(p, "/usr/share/man/") || strings.HasSuffix(p, ".deb") {
			t.Errorf("%s should have been slimmed away", p)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, spec.Entrypoint) || !slices.Equal(cf.Config.Cmd, spec.Cmd) || !slices.Equal(cf.Config.Env, spec.Env) {
		t.Errorf("config %+v", cf.Config)
	}
}
