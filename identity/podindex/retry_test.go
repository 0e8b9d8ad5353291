package podindex

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

func refused() error {
	return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
}

// scriptedListWatch fails its first calls with the given errors, then
// succeeds.
func scriptedListWatch(errs ...error) (*cache.ListWatch, *int) {
	calls := 0
	next := func() error {
		calls++
		if calls <= len(errs) {
			return errs[calls-1]
		}
		return nil
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			if err := next(); err != nil {
				return nil, err
			}
			return &corev1.PodList{}, nil
		},
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) {
			if err := next(); err != nil {
				return nil, err
			}
			return watch.NewEmptyWatch(), nil
		},
	}, &calls
}

func testRetrying(t *testing.T, lw *cache.ListWatch) *retryingListWatch {
	t.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := newRetryingListWatch(lw, fake.NewClientset(), resourcePods, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.initial, r.max = time.Millisecond, 4*time.Millisecond
	return r
}

func TestListAndWatchRetryWhileTheAPIServerIsUnreachable(t *testing.T) {
	unreachableErrs := []error{
		refused(),
		&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)},
		io.ErrUnexpectedEOF,
		apierrors.NewTooManyRequests("slow down", 1),
		apierrors.NewServiceUnavailable("starting"),
	}
	lw, calls := scriptedListWatch(unreachableErrs...)
	r := testRetrying(t, lw)
	if _, err := r.WatchWithContext(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatalf("watch: %v", err)
	}
	if *calls != len(unreachableErrs)+1 {
		t.Errorf("%d calls, want %d", *calls, len(unreachableErrs)+1)
	}
	if got := testutil.ToFloat64(r.failures); got != float64(len(unreachableErrs)) {
		t.Errorf("watch errors counted %v, want %d", got, len(unreachableErrs))
	}
	if !r.downSince.IsZero() {
		t.Error("still marked down after a success")
	}
}

func TestAnswersFromAWorkingAPIServerGoToTheReflector(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	for _, err := range []error{
		apierrors.NewForbidden(gr, "", errors.New("RBAC")),
		apierrors.NewUnauthorized("token expired"),
		apierrors.NewResourceExpired("too old resource version"),
		apierrors.NewBadRequest("field selector"),
	} {
		lw, calls := scriptedListWatch(err)
		r := testRetrying(t, lw)
		if _, got := r.ListWithContext(context.Background(), metav1.ListOptions{}); got != err {
			t.Errorf("list returned %v, want %v at once", got, err)
		}
		if *calls != 1 || testutil.ToFloat64(r.failures) != 0 {
			t.Errorf("%v: %d calls, %v counted; want 1 call, none counted", err, *calls, testutil.ToFloat64(r.failures))
		}
	}
}

func TestRetryingStopsWithItsContext(t *testing.T) {
	errs := make([]error, 1000)
	for i := range errs {
		errs[i] = refused()
	}
	lw, _ := scriptedListWatch(errs...)
	r := testRetrying(t, lw)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := r.WatchWithContext(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("watch succeeded against an API server that never came back")
	}
	if ctx.Err() == nil {
		t.Error("returned before its context was done")
	}
}

func TestRetryingKeepsTheClientsWatchListSupport(t *testing.T) {
	lw, _ := scriptedListWatch()
	// The fake clientset cannot serve watch-list; the reflector must know.
	if !testRetrying(t, lw).IsWatchListSemanticsUnSupported() {
		t.Error("the fake client's lack of watch-list support was lost")
	}
}
