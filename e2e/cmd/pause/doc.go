// Command pause is the e2e node's pod sandbox process (the role of
// registry.k8s.io/pause): PID 1 of every pod, holding its namespaces open.
// It waits for SIGINT or SIGTERM and reaps any child handed to it, so a
// pod with a shared PID namespace never fills with zombies. It is built
// static and is the only file of the e2e pause image.
package main
