{{/*
Labels of every object. app.kubernetes.io/name is the one the DaemonSet
selects on and the one deploy/ keeps; the others are Helm's usual ones.
*/}}
{{- define "metaguard.labels" -}}
app.kubernetes.io/name: metaguard
{{- if .Values.standardLabels }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
{{- end }}

{{- define "metaguard.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/*
The policy document: inline, or the preset's file.
*/}}
{{- define "metaguard.policy" -}}
{{- if .Values.policy.inline -}}
{{ .Values.policy.inline }}
{{- else -}}
{{ .Files.Get (printf "files/policies/%s.yaml" (.Values.preset | default "base")) }}
{{- end -}}
{{- end }}

{{- define "metaguard.policyConfigMap" -}}
{{ .Values.policy.existingConfigMap | default "metaguard-policy" }}
{{- end }}

{{/*
Where metaguard may run: Linux nodes, and never a node without a host
network stack of its own or where another agent owns 169.254.169.254. A
required term the user gives is combined with these expressions (the
expressions of one term are ANDed; terms are ORed, so each user term gets
them all).
*/}}
{{- define "metaguard.affinity" -}}
{{- $placement := list
  (dict "key" "kubernetes.io/os" "operator" "In" "values" (list "linux"))
  (dict "key" "eks.amazonaws.com/compute-type" "operator" "NotIn" "values" (list "fargate"))
  (dict "key" "type" "operator" "NotIn" "values" (list "virtual-kubelet"))
  (dict "key" "iam.gke.io/gke-metadata-server-enabled" "operator" "NotIn" "values" (list "true"))
-}}
{{- $aff := deepCopy .Values.affinity -}}
{{- $node := $aff.nodeAffinity | default dict -}}
{{- $req := $node.requiredDuringSchedulingIgnoredDuringExecution | default dict -}}
{{- $terms := list -}}
{{- range ($req.nodeSelectorTerms | default (list dict)) -}}
{{- $t := deepCopy . -}}
{{- $_ := set $t "matchExpressions" (concat ($t.matchExpressions | default list) $placement) -}}
{{- $terms = append $terms $t -}}
{{- end -}}
{{- $_ := set $req "nodeSelectorTerms" $terms -}}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" $req -}}
{{- $_ := set $aff "nodeAffinity" $node -}}
{{- toYaml $aff -}}
{{- end }}
