package deploy

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"metaguard.dev/metaguard/deploy/image/imagebuild"
)

// TestImageBuilderMatchesTheDockerfile keeps the two ways to build the
// image in step: make image (imagebuild, no container engine) and the
// Dockerfile (make image-engine). Every line of the Dockerfile's runtime
// stage that decides the image's content is compared with
// imagebuild.MetaguardSpec.
func TestImageBuilderMatchesTheDockerfile(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	runtime := df[strings.LastIndex(df, "\nFROM "):]
	spec := imagebuild.MetaguardSpec
	find := func(re string) []string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(runtime)
		if m == nil {
			t.Fatalf("no match for %s in the Dockerfile's runtime stage", re)
		}
		return m[1:]
	}
	jsonList := func(s string) []string {
		var l []string
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		return l
	}

	if base := find(`\nFROM (\S+)`)[0]; base != "debian:"+spec.Suite+"-slim" || !strings.HasSuffix(spec.BaseName, "/"+base) {
		t.Errorf("Dockerfile base %s, builder suite %s and base name %s", base, spec.Suite, spec.BaseName)
	}
	pkgs := strings.Fields(find(`apt-get install -y --no-install-recommends ([a-z0-9 .+-]+)`)[0])
	if !slices.Equal(pkgs, spec.Packages) {
		t.Errorf("Dockerfile installs %v, builder %v", pkgs, spec.Packages)
	}
	if env := "PATH=" + find(`\nENV PATH=(\S+)`)[0]; !slices.Equal([]string{env}, spec.Env) {
		t.Errorf("Dockerfile %s, builder %v", env, spec.Env)
	}
	if dst := find(`\nCOPY deploy/image/iptables-wrapper (\S+)`)[0]; dst != spec.Wrapper {
		t.Errorf("Dockerfile puts the wrapper at %s, builder at %s", dst, spec.Wrapper)
	}
	loop := find(`for name in ([a-z0-9 \\\n-]+); do`)[0]
	if names := strings.Fields(strings.ReplaceAll(loop, "\\", " ")); !slices.Equal(names, spec.Links) {
		t.Errorf("Dockerfile links %v, builder %v", names, spec.Links)
	}
	if link := find(`ln -s (\S+) "/usr/local/sbin/\$\{name\}"`)[0]; link != filepath.Base(spec.Wrapper) || filepath.Dir(spec.Wrapper) != "/usr/local/sbin" {
		t.Errorf("Dockerfile links to %s in /usr/local/sbin, builder to %s", link, spec.Wrapper)
	}
	if dst := find(`\nCOPY --from=build \S+ (\S+)`)[0]; dst != spec.Binary {
		t.Errorf("Dockerfile puts the binary at %s, builder at %s", dst, spec.Binary)
	}
	if ep := jsonList(find(`\nENTRYPOINT (\[.*\])`)[0]); !slices.Equal(ep, spec.Entrypoint) {
		t.Errorf("Dockerfile entrypoint %v, builder %v", ep, spec.Entrypoint)
	}
	if cmd := jsonList(find(`\nCMD (\[.*\])`)[0]); !slices.Equal(cmd, spec.Cmd) {
		t.Errorf("Dockerfile command %v, builder %v", cmd, spec.Cmd)
	}
	labels := regexp.MustCompile(`(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"`).FindAllStringSubmatch(runtime, -1)
	if len(labels) == 0 {
		t.Fatal("no LABEL in the Dockerfile")
	}
	perBuild := map[string]bool{"version": true, "revision": true, "created": true, "source": true, "base.name": true}
	for _, l := range labels {
		key, value := l[1], l[2]
		if perBuild[strings.TrimPrefix(key, "org.opencontainers.image.")] {
			continue
		}
		if spec.Labels[key] != value {
			t.Errorf("label %s: Dockerfile %q, builder %q", key, value, spec.Labels[key])
		}
	}
	if len(labels) != len(spec.Labels)+len(perBuild) {
		t.Errorf("the Dockerfile sets %d labels, the builder %d fixed ones and %d per build", len(labels), len(spec.Labels), len(perBuild))
	}
}

// TestEngineBuildHasTheSameFiles builds the Dockerfile with a container
// engine, where one runs (not on the project's CI machines), and compares
// its files and configuration with make image's archive: the same paths,
// apart from what apt and dpkg leave behind in an engine build (logs,
// caches, their state) and documentation, which Debian's slim base drops
// by its own rules.
func TestEngineBuildHasTheSameFiles(t *testing.T) {
	engine := ""
	for _, e := range []string{"docker", "podman"} {
		if p, err := exec.LookPath(e); err == nil && exec.Command(p, "info").Run() == nil {
			engine = p
			break
		}
	}
	if engine == "" {
		t.Skip("no running container engine (docker or podman); the Dockerfile is compared line by line in TestImageBuilderMatchesTheDockerfile")
	}
	const archive = "../bin/metaguard-image.tar"
	if _, err := os.Stat(archive); err != nil {
		t.Skip("bin/metaguard-image.tar is missing: run make image first")
	}
	saved := filepath.Join(t.TempDir(), "engine.tar")
	for _, args := range [][]string{{"build", "-t", "metaguard-parity:test", ".."}, {"save", "-o", saved, "metaguard-parity:test"}} {
		if out, err := exec.CommandContext(t.Context(), engine, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", engine, args, err, out)
		}
	}
	engineImg, err := tarball.ImageFromPath(saved, nil)
	if err != nil {
		t.Fatal(err)
	}
	ours, err := imagebuild.ReadOCIArchive(archive, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	noise := regexp.MustCompile(`^(var/log|var/cache|var/lib/apt|var/lib/dpkg|usr/share/doc|usr/share/man|usr/share/locale|etc/ld\.so\.cache|etc/machine-id|etc/hostname|etc/resolv\.conf|etc/hosts)(/|$)`)
	paths := func(rc io.ReadCloser) map[string]bool {
		defer rc.Close()
		out := map[string]bool{}
		tr := tar.NewReader(rc)
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			if name := strings.TrimSuffix(filepath.Clean(hdr.Name), "/"); !noise.MatchString(name) {
				out[name] = true
			}
		}
	}
	a, b := paths(mutate.Extract(engineImg)), paths(mutate.Extract(ours[0].Image))
	for p := range a {
		if !b[p] {
			t.Errorf("only in the engine's build: %s", p)
		}
	}
	for p := range b {
		if !a[p] {
			t.Errorf("only in make image's build: %s", p)
		}
	}
	ec, _ := engineImg.ConfigFile()
	oc, _ := ours[0].Image.ConfigFile()
	if !slices.Equal(ec.Config.Entrypoint, oc.Config.Entrypoint) || !slices.Equal(ec.Config.Cmd, oc.Config.Cmd) {
		t.Errorf("entrypoint and command: engine %v %v, make image %v %v", ec.Config.Entrypoint, ec.Config.Cmd, oc.Config.Entrypoint, oc.Config.Cmd)
	}
}
