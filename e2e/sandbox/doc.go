// Package sandbox builds a throw-away cluster node for metaguard's
// end-to-end tests and demo, out of real parts, on one machine, as root:
//
//   - a node network namespace, the node's "host" (172.31.0.1), where etcd
//     and kube-apiserver run on loopback (RBAC on, service account tokens
//     signed by keys made here) and where metaguard runs with real
//     iptables rules;
//   - a cloud network namespace behind the node that owns the metadata
//     addresses: amazon-ec2-metadata-mock on 169.254.169.254:80 (and
//     [fd00:ec2::254]:80, 192.168.100.21:32000, an IMDSv2-only instance on
//     169.254.169.250:80) and the project's fakecloud (GCP on
//     169.254.169.252:80 and [fd20:ce::254]:80, Azure on 169.254.169.251:80),
//     which records every request it receives; Options.MetadataCloud puts
//     the GCP or Azure fake on 169.254.169.254:80 instead of the mock, for
//     client libraries that hard-code it;
//   - one network namespace per pod on node-a, wired to a bridge in the
//     node namespace, with the pod's IPs, and the matching Pod objects in
//     the API server (status.podIPs set through the status subresource);
//     pods on node-b exist only as API objects.
//
// With Options.Node, node-a is a real node instead (node_*.go):
// kube-controller-manager and kube-scheduler join the control plane, and
// containerd (runc, the CNI bridge, host-local, loopback and portmap
// plugins) and the kubelet run in the node namespace and in a mount
// namespace of their own, so that mounts, container state and the fixed
// paths under /var and /run never touch the machine's; the kubelet
// registers node-a, pods are real containers from images imported into
// containerd (nothing is pulled), hostNetwork pods share the node
// namespace, and every container is under the run's own cgroup root, which
// Close removes from every cgroup hierarchy. The kubernetes Service's
// ClusterIP reaches the API server from the node, as kube-proxy would
// make it.
//
// The test process stays in the machine's root namespace and reaches the
// namespaces through sockets opened inside them (NetnsDialer), so nothing
// in the root namespace changes: no interface, route, sysctl or rule is
// added there, and every namespace, process and file is removed by Close,
// also after a failure. Leftovers of a run that was killed are swept by the
// next Start.
//
// Public surface: Start, StartT, CheckPrerequisites, Sweep, Options, Sandbox
// (Close, AdminClient, AdminConfig, AdminKubeconfig, Apply, ApplyManifests,
// ServiceAccountKubeconfig, EnsureNamespace, AddPod, DeletePod,
// DeletePodGracefully, SetContainersTerminated,
// SetPodLabels, SetPodPhase, ExecInPod, ExecInPodWith, ExecInNode, PodClient,
// PodClientWith, PodJSClient, StartProcess, StartMetaguard, StartMetaguardUnready, WaitReady,
// NodeHTTPClient, PodHTTPClient, CloudRecords, ResetCloudRecords, SetGCPValue,
// SetCloudQuirks, AddCloudFault, ClearCloudFaults, AddCloudAddress, Healthy,
// NodeNetns, CloudNetns,
// ArtifactDir, BinDir, APIServerProcess, StopAPIServer, StartAPIServer,
// AddPodNetwork, CreatePodObject, and for a real node Kubectl, ImportImage,
// TagImage, ContainerPID, WaitNodeReady, HasRealNode), Pod, PodSpec,
// NodeOptions, PauseImage, WorkloadImage, PodClientResult, ExecOptions, Process
// (with ProgramPid, ResetPeak and WatchMemory), Memory,
// MemoryWatch, MiB, NetnsDialer, NetnsListen and the addresses of the
// topology.
//
// It must not touch the root network namespace, must not reach anything
// outside the namespaces it made, and must not know metaguard's internals:
// metaguard is a binary it starts and a port it polls.
package sandbox
