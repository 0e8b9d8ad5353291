package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// removeTaintWhenReady removes the node's startup taint once metaguard is
// ready, as CNIs do with their agent-not-ready taints: until then no
// ordinary pod is scheduled on a node whose metadata service is open.
func removeTaintWhenReady(ctx context.Context, client kubernetes.Interface, node, key string, ready func() []string, log *slog.Logger) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for len(ready()) > 0 {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
	for {
		err := removeTaint(ctx, client, node, key)
		if err == nil {
			log.Info("startup taint removed", "node", node, "taint", key)
			return nil
		}
		log.Warn("removing startup taint", "node", node, "taint", key, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func removeTaint(ctx context.Context, client kubernetes.Interface, node, key string) error {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node: %w", err)
	}
	kept := []corev1.Taint{}
	for _, t := range n.Spec.Taints {
		if t.Key != key {
			kept = append(kept, t)
		}
	}
	if len(kept) == len(n.Spec.Taints) {
		return nil
	}
	// "test" makes the patch fail if another agent changed the taints
	// since we read them, instead of overwriting its change.
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/spec/taints", "value": n.Spec.Taints},
		{"op": "replace", "path": "/spec/taints", "value": kept},
	})
	if err != nil {
		return err
	}
	_, err = client.CoreV1().Nodes().Patch(ctx, node, types.JSONPatchType, patch, metav1.PatchOptions{})
	return err
}
