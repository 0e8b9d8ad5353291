package imagebuild

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/distribution/reference"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BuildInfo is what a build stamps into the image's labels, as the
// Dockerfile's VERSION, REVISION, CREATED and SOURCE build arguments do.
type BuildInfo struct {
	Version, Revision, Source string
	// Created is the image's creation time and every file's mtime; the
	// zero time means the Unix epoch, which makes builds reproducible.
	Created time.Time
}

func (b BuildInfo) created() time.Time {
	if b.Created.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return b.Created.UTC()
}

// Metaguard assembles the metaguard image: base (a Debian root with
// MetaguardSpec.Packages, from Debootstrap, Slim and RootfsLayer), then a
// layer with the iptables wrapper and its links, then one with the binary,
// in the Dockerfile's order, so that a new binary changes only the top
// layer.
func Metaguard(base v1.Layer, wrapper, binary []byte, info BuildInfo) (v1.Image, error) {
	spec := MetaguardSpec
	dir := filepath.Dir(spec.Wrapper)
	files := []File{{Path: spec.Wrapper, Mode: 0o755, Data: wrapper}}
	for _, name := range spec.Links {
		files = append(files, File{Path: filepath.Join(dir, name), Link: filepath.Base(spec.Wrapper)})
	}
	links, err := FilesLayer(files, info.created())
	if err != nil {
		return nil, err
	}
	bin, err := FilesLayer([]File{{Path: spec.Binary, Mode: 0o755, Data: binary}}, info.created())
	if err != nil {
		return nil, err
	}
	labels := maps.Clone(spec.Labels)
	labels["org.opencontainers.image.version"] = info.Version
	labels["org.opencontainers.image.revision"] = info.Revision
	labels["org.opencontainers.image.created"] = info.created().Format(time.RFC3339)
	labels["org.opencontainers.image.source"] = info.Source
	labels["org.opencontainers.image.base.name"] = spec.BaseName
	return assemble([]layerStep{
		{base, "debootstrap --variant=minbase " + spec.Suite + " + " + fmt.Sprint(spec.Packages) + ", slimmed"},
		{links, "COPY deploy/image/iptables-wrapper " + spec.Wrapper + " and its links"},
		{bin, "COPY metaguard " + spec.Binary},
	}, v1.Config{
		Env:        slices.Clone(spec.Env),
		Entrypoint: slices.Clone(spec.Entrypoint),
		Cmd:        slices.Clone(spec.Cmd),
		Labels:     labels,
	}, info.created())
}

// Static is an image of one static binary at path and nothing else, run as
// entrypoint with cmd: the e2e node's pause image and workload image.
func Static(path string, binary []byte, cmd []string, info BuildInfo) (v1.Image, error) {
	l, err := FilesLayer([]File{{Path: path, Mode: 0o755, Data: binary}}, info.created())
	if err != nil {
		return nil, err
	}
	return assemble([]layerStep{{l, "COPY " + filepath.Base(path) + " " + path}}, v1.Config{
		Entrypoint: []string{path},
		Cmd:        cmd,
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	}, info.created())
}

type layerStep struct {
	layer     v1.Layer
	createdBy string
}

func assemble(steps []layerStep, cfg v1.Config, created time.Time) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, s := range steps {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   s.layer,
			History: v1.History{Created: v1.Time{Time: created}, CreatedBy: s.createdBy},
		})
		if err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Config = cfg
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: created}
	return mutate.ConfigFile(img, cf)
}

// Tagged is an image and the reference it is known by
// (registry.k8s.io/pause:3.10, localhost/metaguard:dev).
type Tagged struct {
	Ref   string
	Image v1.Image
}

// refAnnotations name an image in an OCI index: the OCI standard's
// reference annotation and containerd's image-name one, which `ctr images
// import` takes as the image's name. Both hold the normalised reference
// (metaguard:dev is docker.io/library/metaguard:dev): the kubelet asks the
// runtime for pods' images by that name, and containerd stores a name
// exactly as imported.
func refAnnotations(ref string) (map[string]string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	full := reference.TagNameOnly(named).String()
	return map[string]string{
		"org.opencontainers.image.ref.name": full,
		"io.containerd.image.name":          full,
	}, nil
}

// WriteOCIArchive writes images as one OCI image layout packed in a tar
// file (what `docker save --format oci`, `podman save --format oci-archive`
// and `ctr images export` write, and `ctr images import` reads).
func WriteOCIArchive(path string, images ...Tagged) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	for _, t := range images {
		ann, err := refAnnotations(t.Ref)
		if err != nil {
			return err
		}
		if err := p.AppendImage(t.Image, layout.WithAnnotations(ann)); err != nil {
			return fmt.Errorf("writing %s: %w", t.Ref, err)
		}
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // a failed write leaves nothing; after the rename there is nothing to remove
	if err := writeTree(f, dir, time.Unix(0, 0)); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadOCIArchive unpacks an archive WriteOCIArchive (or an engine) wrote
// into dir and returns its images by reference.
func ReadOCIArchive(path, dir string) ([]Tagged, error) {
	if err := untar(path, dir); err != nil {
		return nil, err
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []Tagged
	for _, d := range m.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, err
		}
		out = append(out, Tagged{Ref: d.Annotations["io.containerd.image.name"], Image: img})
	}
	return out, nil
}

// untar extracts the regular files and directories of a layout archive;
// a layout holds nothing else.
func untar(path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if !filepath.IsLocal(hdr.Name) {
			return fmt.Errorf("%s: entry %q leaves the archive", path, hdr.Name)
		}
		target := filepath.Join(dir, hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fs.FileMode(hdr.Mode)&0o644|0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		}
	}
}

// ArchiveRefs lists the image names an OCI archive's index gives (what
// `ctr images import` will call them), reading only its index.json.
func ArchiveRefs(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("%s: no index.json: not an OCI archive", path)
		}
		if err != nil {
			return nil, err
		}
		if filepath.Clean(hdr.Name) != "index.json" {
			continue
		}
		var idx v1.IndexManifest
		if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&idx); err != nil {
			return nil, fmt.Errorf("%s: index.json: %w", path, err)
		}
		var refs []string
		for _, m := range idx.Manifests {
			if r := m.Annotations["io.containerd.image.name"]; r != "" {
				refs = append(refs, r)
			}
		}
		return refs, nil
	}
}
