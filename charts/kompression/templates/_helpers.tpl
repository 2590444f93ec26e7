{{/* The chart name, or nameOverride. */}}
{{- define "kompression.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name: fullnameOverride, or <release>-<name> unless the release already contains the name. */}}
{{- define "kompression.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "kompression.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels that select the operator's pods; never change them, Deployment selectors are immutable. */}}
{{- define "kompression.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kompression.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object. */}}
{{- define "kompression.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kompression.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kompression
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "kompression.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kompression.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: the digest wins, the tag defaults to appVersion. Call with (list image root). */}}
{{- define "kompression.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The operator's namespaced permissions: granted cluster-wide or per watched namespace (see rbac.yaml). */}}
{{- define "kompression.namespacedRules" -}}
# Watch CompressionJobs and record progress on them; the operator creates only a sweep's trials, and never
# deletes one (a sweep's trials go with it, by ownerReferences and the garbage collector).
- apiGroups: ["kompression.dev"]
  resources: ["compressionjobs"]
  verbs: ["get", "list", "watch", "patch", "create"]
# Watch CompressionSweeps; each trial's CompressionJob is owned by its sweep.
- apiGroups: ["kompression.dev"]
  resources: ["compressionsweeps"]
  verbs: ["get", "list", "watch", "patch"]
# Status is a subresource: results, conditions and per-step (per-trial) state are written here only.
- apiGroups: ["kompression.dev"]
  resources: ["compressionjobs/status", "compressionsweeps/status"]
  verbs: ["get", "patch"]
# A trial's ownerReference blocks its sweep's deletion until the trial is gone, which the API server's
# OwnerReferencesPermissionEnforcement allows only to who may update the sweep's finalizers.
- apiGroups: ["kompression.dev"]
  resources: ["compressionsweeps/finalizers"]
  verbs: ["update"]
# Each CompressionJob runs as one batch/v1 Job; deleted when the CompressionJob is suspended or replaced.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete"]
# The worker reads its copy of the manifest from a ConfigMap the operator writes. It is created and read back
# by name (AlreadyExists after a restart), never listed or watched.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get"]
# Worker pods' status and termination messages explain failures (OOMKilled, ImagePullBackOff, exit codes).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# A queued Job's Kueue Workload says why it waits (no quota, preempted); read only, and only if Kueue is installed.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch"]
# Kubernetes events on the CompressionJob tell users what happened (kopf posts and aggregates them).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.operator.peering.enabled }}
# With several replicas, kopf's per-namespace peering object elects the one that works.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}
