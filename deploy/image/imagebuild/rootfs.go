package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultMirror is the Debian archive debootstrap downloads from.
const DefaultMirror = "http://deb.debian.org/debian"

// debianKeyring is the Debian archive's signing keys (package
// debian-archive-keyring), which every download is checked against.
const debianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// Debootstrap installs a minimal Debian (debootstrap's minbase variant, the
// package set Debian's official images start from) plus packages into dir,
// which must not exist yet or be empty. It runs as root in a private mount
// namespace: debootstrap mounts /proc and /sys inside the target while
// packages configure, and those mounts must never appear in, or be left
// behind in, the machine's own mount table.
func Debootstrap(ctx context.Context, dir, suite, mirror string, packages []string) error {
	if os.Geteuid() != 0 {
		return errors.New("debootstrap needs root (it chroots and runs dpkg in the target)")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return errors.New("debootstrap is not installed (apt-get install debootstrap)")
	}
	if _, err := os.Stat(debianKeyring); err != nil {
		return fmt.Errorf("debootstrap checks the archive's signatures against %s: %w (apt-get install debian-archive-keyring)", debianKeyring, err)
	}
	// The mirror is plain HTTP: without a keyring debootstrap would only
	// warn that it cannot check the Release file, and go on.
	args := []string{"--mount", "--propagation", "private", "debootstrap", "--variant=minbase", "--components=main", "--keyring=" + debianKeyring}
	if len(packages) > 0 {
		args = append(args, "--include="+strings.Join(packages, ","))
	}
	args = append(args, suite, dir, mirror)
	cmd := exec.CommandContext(ctx, "unshare", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		log := out.String()
		if b, rerr := os.ReadFile(filepath.Join(dir, "debootstrap", "debootstrap.log")); rerr == nil {
			log += "\n" + string(b)
		}
		return fmt.Errorf("debootstrap %s: %w\n%s", suite, err, tail(log, 40))
	}
	return nil
}

// slimRemove are the paths Debian's slim images drop (debuerreotype's
// slimify: documentation, manuals, translations) plus what an image build
// leaves behind and never uses: downloaded packages, apt's lists (the
// Dockerfile removes them too), logs and device nodes (the runtime mounts
// its own /dev). Each pattern is a filepath.Glob below the root.
var slimRemove = []string{
	"usr/share/doc/*/*", "usr/share/info/*", "usr/share/man/*", "usr/share/groff/*",
	"usr/share/linda/*", "usr/share/lintian/*", "usr/share/locale/*",
	"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
	"var/log/*", "var/cache/ldconfig/aux-cache", "dev/*", "proc/*", "sys/*", "run/*",
	"debootstrap",
}

// slimKeep survive slimRemove: every package's copyright file, as in the
// slim images, and the locale alias table glibc reads.
var slimKeep = map[string]bool{"usr/share/locale/locale.alias": true}

// Slim trims a debootstrapped root the way Debian's slim images are
// trimmed; see slimRemove. It works through an os.Root, so a symlink in the
// tree (a package's absolute doc link, say) is never followed out of it to
// the build machine's own files.
func Slim(root string) error {
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, pat := range slimRemove {
		matches, err := fs.Glob(r.FS(), pat)
		if err != nil {
			return err
		}
		for _, m := range matches {
			if slimKeep[m] || path.Base(m) == "copyright" && strings.HasPrefix(m, "usr/share/doc/") {
				continue
			}
			if err := r.RemoveAll(m); err != nil {
				return fmt.Errorf("slimming %s: %w", m, err)
			}
		}
	}
	// An image gets its machine id and resolver from the runtime.
	for _, f := range []string{"etc/machine-id", "etc/hostname", "etc/resolv.conf"} {
		if err := r.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
