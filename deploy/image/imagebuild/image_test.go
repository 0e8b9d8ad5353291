package imagebuild

import (
	"archive/tar"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// entry is a file of a flattened image.
type entry struct {
	mode fs.FileMode
	link string
	data string
}

// flatten lists an image's files as a container would see them.
func flatten(t *testing.T, img v1.Image) map[string]entry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]entry{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out["/"+filepath.Clean(hdr.Name)] = entry{mode: hdr.FileInfo().Mode(), link: hdr.Linkname, data: string(b)}
	}
}

func TestMetaguardImageHasTheDockerfilesContent(t *testing.T) {
	base, err := FilesLayer([]File{{Path: "/bin/sh", Mode: 0o755, Data: []byte("dash")}}, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	img, err := Metaguard(base, []byte("#!/bin/sh\n"), []byte("ELF"), BuildInfo{Version: "v1.2.3", Revision: "abc"})
	if err != nil {
		t.Fatal(err)
	}
	files := flatten(t, img)
	spec := MetaguardSpec
	if e := files[spec.Binary]; e.data != "ELF" || e.mode.Perm() != 0o755 {
		t.Errorf("%s: %+v, want the binary, mode 0755", spec.Binary, e)
	}
	if e := files[spec.Wrapper]; e.data != "#!/bin/sh\n" || e.mode.Perm() != 0o755 {
		t.Errorf("%s: %+v, want the wrapper, mode 0755", spec.Wrapper, e)
	}
	for _, name := range spec.Links {
		if e := files[filepath.Join(filepath.Dir(spec.Wrapper), name)]; e.mode&fs.ModeSymlink == 0 || e.link != "iptables-wrapper" {
			t.Errorf("%s: %+v, want a link to iptables-wrapper", name, e)
		}
	}
	if files["/bin/sh"].data != "dash" {
		t.Error("the base layer's files are missing")
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if !slices.Equal(c.Entrypoint, spec.Entrypoint) || !slices.Equal(c.Cmd, spec.Cmd) || !slices.Equal(c.Env, spec.Env) {
		t.Errorf("config entrypoint %v cmd %v env %v, want %v %v %v", c.Entrypoint, c.Cmd, c.Env, spec.Entrypoint, spec.Cmd, spec.Env)
	}
	if c.Labels["org.opencontainers.image.version"] != "v1.2.3" || c.Labels["org.opencontainers.image.revision"] != "abc" ||
		c.Labels["org.opencontainers.image.title"] != "metaguard" || c.Labels["org.opencontainers.image.base.name"] != spec.BaseName {
		t.Errorf("labels %v", c.Labels)
	}
	if layers, _ := img.Layers(); len(layers) != 3 {
		t.Errorf("%d layers, want base, wrapper and binary, so that a new binary changes only the top one", len(layers))
	}
}

func TestBuildsAreReproducible(t *testing.T) {
	digest := func() v1.Hash {
		img, err := Static("/pause", []byte("binary"), nil, BuildInfo{})
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if a, b := digest(), digest(); a != b {
		t.Errorf("the same inputs gave %s and %s", a, b)
	}
}

func TestOCIArchiveNamesImagesAsTheKubeletAsksForThem(t *testing.T) {
	img, err := Static("/usr/local/bin/podclient", []byte("binary"), []string{"sleep"}, BuildInfo{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "images.tar")
	if err := WriteOCIArchive(path, Tagged{"metaguard:dev", img}, Tagged{"registry.k8s.io/pause:3.10", img}, Tagged{"localhost/w", img}); err != nil {
		t.Fatal(err)
	}
	refs, err := ArchiveRefs(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"docker.io/library/metaguard:dev", "registry.k8s.io/pause:3.10", "localhost/w:latest"}
	if !slices.Equal(refs, want) {
		t.Errorf("refs %v, want %v", refs, want)
	}
	back, err := ReadOCIArchive(path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != 3 {
		t.Fatalf("read back %d images, want 3", len(back))
	}
	d1, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range back {
		d2, err := b.Image.Digest()
		if err != nil || d1 != d2 || b.Ref != want[i] {
			t.Errorf("image %d read back as %s %s (%v), want %s %s", i, b.Ref, d2, err, want[i], d1)
		}
	}
	if err := WriteOCIArchive(path, Tagged{"Not A Ref", img}); err == nil {
		t.Error("an invalid reference was accepted")
	}
}

func TestSlimDropsDocsButKeepsCopyrights(t *testing.T) {
	root := t.TempDir()
	keep := []string{"usr/share/doc/iptables/copyright", "usr/share/locale/locale.alias", "usr/sbin/iptables-nft", "var/lib/dpkg/status"}
	drop := []string{"usr/share/doc/iptables/changelog.gz", "usr/share/man/man8/iptables.8.gz", "usr/share/locale/de/LC_MESSAGES/x.mo",
		"var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease", "var/cache/apt/archives/iptables.deb", "var/log/dpkg.log", "etc/machine-id"}
	for _, f := range append(slices.Clone(keep), drop...) {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A doc directory that is an absolute symlink points out of the root
	// (to the build machine's own files, as the image is built as root).
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("the build machine's"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "usr/share/doc/escape")); err != nil {
		t.Fatal(err)
	}
	if err := Slim(root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("Slim followed a symlink out of the root and removed %s: %v", victim, err)
	}
	for _, f := range keep {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("%s was removed", f)
		}
	}
	for _, f := range drop {
		if _, err := os.Stat(filepath.Join(root, f)); err == nil {
			t.Errorf("%s was kept", f)
		}
	}
}

func TestRootfsLayerKeepsLinksAndStampsTimes(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/perl"), []byte("perl"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "usr/bin/perl"), filepath.Join(root, "usr/bin/perl5.36.0")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("perl", filepath.Join(root, "usr/bin/perl5")); err != nil {
		t.Fatal(err)
	}
	l, err := RootfsLayer(root, filepath.Join(t.TempDir(), "layer.tar"), time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	types := map[string]byte{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s has mtime %v", hdr.Name, hdr.ModTime)
		}
		types[hdr.Name] = hdr.Typeflag
	}
	want := map[string]byte{"usr/": tar.TypeDir, "usr/bin/": tar.TypeDir, "usr/bin/perl": tar.TypeReg, "usr/bin/perl5": tar.TypeSymlink, "usr/bin/perl5.36.0": tar.TypeLink}
	for name, typ := range want {
		if types[name] != typ {
			t.Errorf("%s: type %q, want %q (all: %v)", name, types[name], typ, types)
		}
	}
}
