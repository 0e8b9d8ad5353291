package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"metaguard.dev/metaguard/deploy/image/imagebuild"
)

func main() { os.Exit(run(os.Args[1:])) }

const usage = "usage: imagebuild metaguard|static -out FILE -ref REF[,REF...] -binary FILE [flags]"

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("imagebuild "+args[0], flag.ContinueOnError)
	out := fs.String("out", "", "OCI archive to write")
	refs := fs.String("ref", "", "image reference(s), comma-separated")
	binary := fs.String("binary", "", "the static binary to put in the image")
	version := fs.String("version", "dev", "org.opencontainers.image.version")
	revision := fs.String("revision", "", "org.opencontainers.image.revision")
	source := fs.String("source", "", "org.opencontainers.image.source")
	// metaguard only
	wrapper := fs.String("wrapper", "deploy/image/iptables-wrapper", "the iptables wrapper script")
	cache := fs.String("cache", "bin/image-cache", "where the Debian root layer is kept between builds")
	mirror := fs.String("mirror", imagebuild.DefaultMirror, "Debian mirror for debootstrap")
	// static only
	path := fs.String("path", "", "where the binary goes in a static image")
	cmd := fs.String("cmd", "", "the static image's command (arguments to the binary), space-separated")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *out == "" || *refs == "" || *binary == "" {
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	bin, err := os.ReadFile(*binary)
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		return 1
	}
	info := imagebuild.BuildInfo{Version: *version, Revision: *revision, Source: *source}
	var img v1.Image
	switch args[0] {
	case "metaguard":
		img, err = buildMetaguard(ctx, bin, *wrapper, *cache, *mirror, info)
	case "static":
		if *path == "" {
			fmt.Fprintln(os.Stderr, "imagebuild static: -path is required")
			return 2
		}
		img, err = imagebuild.Static(*path, bin, strings.Fields(*cmd), info)
	default:
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	if err == nil {
		var tagged []imagebuild.Tagged
		for _, r := range strings.Split(*refs, ",") {
			tagged = append(tagged, imagebuild.Tagged{Ref: r, Image: img})
		}
		err = imagebuild.WriteOCIArchive(*out, tagged...)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		return 1
	}
	return 0
}

func buildMetaguard(ctx context.Context, bin []byte, wrapperPath, cache, mirror string, info imagebuild.BuildInfo) (v1.Image, error) {
	wrapper, err := os.ReadFile(wrapperPath)
	if err != nil {
		return nil, err
	}
	base, err := debianLayer(ctx, cache, mirror)
	if err != nil {
		return nil, err
	}
	return imagebuild.Metaguard(base, wrapper, bin, info)
}

// rootfsFormat changes whenever what goes into the cached Debian layer
// changes (the slim rules, the archiving), so an old cache is not reused.
const rootfsFormat = "1"

// debianLayer returns the slimmed Debian root as a layer, from the cache
// when an earlier build made it with the same suite, packages and mirror.
// Debian's security updates reach it when the cache is removed.
func debianLayer(ctx context.Context, cache, mirror string) (v1.Layer, error) {
	spec := imagebuild.MetaguardSpec
	key := sha256.Sum256([]byte(strings.Join([]string{rootfsFormat, spec.Suite, mirror, strings.Join(spec.Packages, ",")}, "\n")))
	layerPath := filepath.Join(cache, "debian-"+spec.Suite+"-"+hex.EncodeToString(key[:8])+".tar")
	if _, err := os.Stat(layerPath); err == nil {
		return tarball.LayerFromFile(layerPath, tarball.WithMediaType(types.OCILayer))
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp(cache, ".rootfs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	fmt.Fprintf(os.Stderr, "imagebuild: debootstrap %s with %v from %s into %s (a minute or two)\n", spec.Suite, spec.Packages, mirror, root)
	begin := time.Now()
	if err := imagebuild.Debootstrap(ctx, root, spec.Suite, mirror, spec.Packages); err != nil {
		return nil, err
	}
	if err := imagebuild.Slim(root); err != nil {
		return nil, err
	}
	tmp := layerPath + ".tmp"
	if _, err := imagebuild.RootfsLayer(root, tmp, time.Unix(0, 0)); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, layerPath); err != nil {
		return nil, errors.Join(err, os.Remove(tmp))
	}
	fmt.Fprintf(os.Stderr, "imagebuild: Debian root ready in %v\n", time.Since(begin).Round(time.Second))
	return tarball.LayerFromFile(layerPath, tarball.WithMediaType(types.OCILayer))
}
