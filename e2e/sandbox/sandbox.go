package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"metaguard.dev/metaguard/e2e/fakecloud"
)

// Options configure a sandbox. The zero value is what tests want.
type Options struct {
	// BinDir holds etcd, kube-apiserver, ec2-metadata-mock, fakecloud,
	// podclient and metaguard. Default: bin/ at the top of the metaguard
	// checkout that contains the working directory.
	BinDir string
	// ArtifactDir receives the processes' logs. Default: a new temporary
	// directory, removed by Close unless KeepArtifacts.
	ArtifactDir string
	// KeepArtifacts keeps the logs after Close.
	KeepArtifacts bool
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
	// MetadataCloud picks which cloud's metadata service answers at
	// 169.254.169.254:80, the address client libraries hard-code:
	// "" for amazon-ec2-metadata-mock, fakecloud.GCP (which then also
	// answers DNS there, as GCE's resolver) or fakecloud.Azure. The
	// fakes answer on their own addresses too either way.
	MetadataCloud fakecloud.Flavor
	// Node, when set, makes node-a a real node with a kubelet and
	// containerd (see NodeOptions); node-b is not registered then, since
	// a DaemonSet would wait for it forever.
	Node *NodeOptions
}

// ErrPrerequisite marks a machine that cannot run a sandbox (not root, a
// tool or binary missing); tests may skip on it.
var ErrPrerequisite = errors.New("sandbox prerequisite missing")

// lockDir holds one lock file per live run. A run holds an flock on its
// file for its whole life; the kernel drops it when the process dies, so
// a file that can be locked belongs to a dead run whose leftovers may be
// swept, and a live run in another process is never disturbed.
const lockDir = "/run/metaguard-e2e"

// runName matches the names a run gives its namespaces: "mg" and four hex
// digits, short so that derived names stay under IFNAMSIZ.
var runName = regexp.MustCompile(`^(mg[0-9a-f]{4})-`)

// requiredBinaries are the programs a sandbox starts; metaguard is only
// needed by StartMetaguard.
var requiredBinaries = []string{"etcd", "kube-apiserver", "ec2-metadata-mock", "fakecloud", "podclient"}

// Sandbox is one running sandbox. Its methods are safe for concurrent use.
type Sandbox struct {
	// Prefix names this run's namespaces: <Prefix>-node, <Prefix>-cloud,
	// <Prefix>-p<N>.
	Prefix string

	opts      Options
	binDir    string
	dir       string // private state: keys, etcd data, kubeconfigs
	pkiDir    string
	artifacts string
	ownsArts  bool
	lock      *os.File

	pki             *pki
	node            *nodeState // nil unless Options.Node
	admin           *rest.Config
	client          kubernetes.Interface
	adminKubeconfig string
	apiserver       *Process

	mu      sync.Mutex
	closed  bool
	netns   []string
	procs   []*Process
	names   map[string]bool
	slots   map[int]bool
	apiOnly int

	closeOnce sync.Once
	closeErr  error
}

// CheckPrerequisites reports what this machine lacks to run a sandbox,
// wrapping ErrPrerequisite, or nil.
func CheckPrerequisites(opts Options) error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces and iptables need it)")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" in PATH (apt-get install iproute2 iptables)")
		}
	}
	binDir, err := resolveBinDir(opts.BinDir)
	if err != nil {
		missing = append(missing, err.Error())
	} else {
		var bins []string
		for _, b := range requiredBinaries {
			if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
				bins = append(bins, "bin/"+b)
			}
		}
		if opts.Node != nil {
			nodeBins, tools := nodeMissing(binDir)
			bins = append(bins, nodeBins...)
			missing = append(missing, tools...)
		}
		if len(bins) > 0 {
			missing = append(missing, fmt.Sprintf("%s in %s (make %s)", strings.Join(bins, ", "), binDir, strings.Join(bins, " ")))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrPrerequisite, strings.Join(missing, "; "))
	}
	return nil
}

func resolveBinDir(dir string) (string, error) {
	if dir != "" {
		return filepath.Abs(dir)
	}
	root, err := checkoutRoot()
	if err != nil {
		return "", fmt.Errorf("%w (set Options.BinDir)", err)
	}
	return filepath.Join(root, "bin"), nil
}

// checkoutRoot is the top of the metaguard checkout holding the working
// directory: go test runs in the package's directory, make at the top.
func checkoutRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			strings.HasPrefix(string(b), "module metaguard.dev/metaguard\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no metaguard checkout above %s", wd)
		}
	}
}

// Start builds a sandbox: it sweeps what killed runs left behind, makes
// the namespaces, starts the control plane and the metadata services, and
// registers node-a and node-b. On error everything made so far is removed.
func Start(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	if err := CheckPrerequisites(opts); err != nil {
		return nil, err
	}
	switch opts.MetadataCloud {
	case "", fakecloud.GCP, fakecloud.Azure:
	default:
		return nil, fmt.Errorf("Options.MetadataCloud %q: want \"\", %q or %q", opts.MetadataCloud, fakecloud.GCP, fakecloud.Azure)
	}
	begin := time.Now()
	s := &Sandbox{opts: opts, names: map[string]bool{}, slots: map[int]bool{}}
	if s.binDir, err = resolveBinDir(opts.BinDir); err != nil {
		return nil, err
	}
	if err := s.claimPrefix(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := s.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleaning up the failed start: %w", cerr))
			}
		}
	}()
	Sweep(s.logf)

	if s.dir, err = os.MkdirTemp("", "metaguard-e2e-"+s.Prefix+"-"); err != nil {
		return nil, fmt.Errorf("creating run directory: %w", err)
	}
	s.pkiDir = filepath.Join(s.dir, "pki")
	s.artifacts = opts.ArtifactDir
	if s.artifacts == "" {
		s.artifacts, s.ownsArts = filepath.Join(s.dir, "logs"), !opts.KeepArtifacts
	}
	for _, d := range []string{s.pkiDir, s.artifacts} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating %s: %w", d, err)
		}
	}

	if err := s.setupNetwork(ctx); err != nil {
		return nil, fmt.Errorf("setting up namespaces: %w", err)
	}
	s.logf("namespaces ready after %v", time.Since(begin).Round(time.Millisecond))
	// The API server takes seconds to come up; the cloud side starts
	// meanwhile.
	cloudErr := make(chan error, 1)
	go func() { cloudErr <- s.startCloud(ctx) }()
	cpErr := s.startControlPlane(ctx)
	if err := errors.Join(cpErr, <-cloudErr); err != nil {
		return nil, err
	}
	s.logf("control plane and metadata services ready after %v", time.Since(begin).Round(time.Millisecond))
	if opts.Node != nil {
		err = s.startRealNode(ctx, *opts.Node)
	} else {
		err = s.registerNodes(ctx)
	}
	if err != nil {
		return nil, err
	}
	s.adminKubeconfig = filepath.Join(s.dir, "kubeconfig-admin")
	if err := s.writeKubeconfig(s.adminKubeconfig, "admin", &clientcmdapi.AuthInfo{
		ClientCertificateData: s.pki.certs["admin"].certPEM,
		ClientKeyData:         s.pki.certs["admin"].keyPEM,
	}); err != nil {
		return nil, err
	}
	s.logf("sandbox %s started in %v (logs in %s)", s.Prefix, time.Since(begin).Round(time.Millisecond), s.artifacts)
	return s, nil
}

// claimPrefix picks an unused run name and locks it for this run's life.
func (s *Sandbox) claimPrefix() error {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", lockDir, err)
	}
	for range 20 {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		prefix := "mg" + hex.EncodeToString(b[:])
		if _, err := os.Stat(filepath.Join(netnsDir, prefix+"-node")); err == nil {
			continue
		}
		f, err := os.OpenFile(filepath.Join(lockDir, prefix+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return fmt.Errorf("creating run lock: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		s.Prefix, s.lock = prefix, f
		return nil
	}
	return errors.New("no free run name after 20 tries")
}

// Sweep removes what runs whose process is gone (killed before Close could
// run) left behind: their namespaces, anything still running in them, and
// their temporary directories. Live runs, in this process or another, are
// left alone. Start calls it; a Makefile may too, after the tests.
func Sweep(logf func(string, ...any)) {
	defer sweepCgroups(logf)
	names, err := listNetns()
	if err != nil {
		logf("sweep: %v", err)
		return
	}
	dead := map[string]bool{}
	for _, n := range names {
		m := runName.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		prefix := m[1]
		if _, seen := dead[prefix]; !seen {
			dead[prefix] = runIsDead(prefix)
		}
		if dead[prefix] {
			logf("sweeping %s, left behind by a run that did not finish", n)
			if err := deleteNetns(n); err != nil {
				logf("sweep: %v", err)
			}
		}
	}
	for prefix, isDead := range dead {
		if !isDead {
			continue
		}
		// The run directory holds etcd's preallocated WAL: 100 MB or more
		// per killed run. Logs kept under ArtifactDir are not touched.
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "metaguard-e2e-"+prefix+"-*"))
		for _, d := range dirs {
			if err := os.RemoveAll(d); err != nil {
				logf("sweep: %v", err)
			}
		}
		os.Remove(filepath.Join(lockDir, prefix+".lock"))
	}
}

// runIsDead reports whether no live process holds the run's lock. The
// probe's own lock is released by closing the file.
func runIsDead(prefix string) bool {
	f, err := os.OpenFile(filepath.Join(lockDir, prefix+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return false
	}
	defer f.Close()
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil
}

// registerNodes creates the Node objects: node-a is this sandbox, node-b
// a node whose pods exist only in the API.
func (s *Sandbox) registerNodes(ctx context.Context) error {
	for name, ip := range map[string]string{NodeName: HostIP.String(), OtherNodeName: "172.31.1.1"} {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
		}
		created, err := s.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("registering node %s: %w", name, err)
		}
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
		created.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		if _, err := s.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("setting status of node %s: %w", name, err)
		}
	}
	return nil
}

// Close stops every process, deletes every namespace (which removes their
// interfaces and iptables rules with them) and the run's files. It is safe
// to call more than once and from a signal handler's goroutine.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		begin := time.Now()
		// The node's containers and cgroups go first: they are not
		// children of anything stopAll signals.
		errs := []error{s.stopRealNode()}
		errs = append(errs, s.stopAll())

		names, err := listNetns()
		errs = append(errs, err)
		for _, n := range names {
			if strings.HasPrefix(n, s.Prefix+"-") {
				errs = append(errs, deleteNetns(n))
			}
		}
		if s.dir != "" {
			if !s.ownsArts && strings.HasPrefix(s.artifacts, s.dir) {
				// Logs the caller wants kept live in the run directory:
				// keep only them.
				errs = append(errs, removeAllBut(s.dir, s.artifacts))
			} else {
				errs = append(errs, os.RemoveAll(s.dir))
			}
		}
		if s.lock != nil {
			os.Remove(s.lock.Name())
			s.lock.Close()
		}
		s.closeErr = errors.Join(errs...)
		s.logf("sandbox %s closed in %v", s.Prefix, time.Since(begin).Round(time.Millisecond))
	})
	return s.closeErr
}

func removeAllBut(dir, keep string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if p != keep {
			errs = append(errs, os.RemoveAll(p))
		}
	}
	return errors.Join(errs...)
}

// ArtifactDir is where the processes' logs are.
func (s *Sandbox) ArtifactDir() string { return s.artifacts }

// BinDir is where the sandbox found its binaries.
func (s *Sandbox) BinDir() string { return s.binDir }

func (s *Sandbox) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}
