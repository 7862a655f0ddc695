{{/*
The chart's name (nameOverride wins).
*/}}
{{- define "trunkline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name the chart's objects are named after: fullnameOverride, else the release name
when it contains the chart name, else `<release>-<chart>`. 54 characters at most, so that
`<fullname>-operator` and the fleet's `<name>-internal` stay within 63.
*/}}
{{- define "trunkline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Name of the operator's objects (Deployment, ServiceAccount, RBAC, ConfigMap, Service).
*/}}
{{- define "trunkline.operatorName" -}}
{{- printf "%s-operator" (include "trunkline.fullname" .) -}}
{{- end -}}

{{/*
The gateway fleet's name: gateway.name, else the full name. The operator refuses a name that
is not a DNS label starting with a letter: fail here, at install time, instead.
*/}}
{{- define "trunkline.fleetName" -}}
{{- $name := default (include "trunkline.fullname" .) .Values.gateway.name -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]{0,52}[a-z0-9])?$" $name) -}}
{{- fail (printf "the fleet name %q (gateway.name, or the release name) must be lowercase letters, digits and '-', start with a letter and be at most 54 characters: set gateway.name" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/*
Name of the leader-election Lease.
*/}}
{{- define "trunkline.leaseName" -}}
{{- default (printf "%s-operator" (include "trunkline.fleetName" .)) .Values.operator.leaseName -}}
{{- end -}}

{{/*
Name of the Secret the operator writes for the gateways.
*/}}
{{- define "trunkline.credentialsSecret" -}}
{{- default (printf "%s-gateway-credentials" (include "trunkline.fleetName" .)) .Values.gateway.credentialsSecret -}}
{{- end -}}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "trunkline.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "trunkline.operatorName" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}: the digest wins over the tag.
*/}}
{{- define "trunkline.imageRef" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{- define "trunkline.operatorImage" -}}
{{- $i := .Values.operator.image -}}
{{- include "trunkline.imageRef" (dict "repository" $i.repository "tag" (default .Chart.AppVersion $i.tag) "digest" $i.digest) -}}
{{- end -}}

{{/*
The gateway image: each empty field of gateway.image takes the operator's.
*/}}
{{- define "trunkline.gatewayImage" -}}
{{- $o := .Values.operator.image -}}
{{- $g := .Values.gateway.image -}}
{{- $tag := default (default .Chart.AppVersion $o.tag) $g.tag -}}
{{- $digest := $g.digest -}}
{{- if and (not $digest) (not $g.repository) (not $g.tag) -}}
{{- $digest = $o.digest -}}
{{- end -}}
{{- include "trunkline.imageRef" (dict "repository" (default $o.repository $g.repository) "tag" $tag "digest" $digest) -}}
{{- end -}}

{{/*
Labels of every object of the chart.
*/}}
{{- define "trunkline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "trunkline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trunkline
{{- end -}}

{{/*
Labels that select the operator pods. They differ from the gateway pods' labels by
app.kubernetes.io/component.
*/}}
{{- define "trunkline.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "trunkline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
Labels that select the fleet's gateway pods (the operator puts them on every gateway pod).
*/}}
{{- define "trunkline.gatewaySelectorLabels" -}}
app.kubernetes.io/component: gateway
trunkline.dev/fleet: {{ include "trunkline.fleetName" . }}
{{- end -}}

{{/*
The RTP range as {low, high}, checked: LOW-HIGH, LOW even, LOW below HIGH.
*/}}
{{- define "trunkline.rtpRange" -}}
{{- $parts := splitList "-" .Values.gateway.rtpPorts -}}
{{- $low := atoi (index $parts 0) -}}
{{- $high := atoi (index $parts 1) -}}
{{- if or (ge $low $high) (ne (mod $low 2) 0) -}}
{{- fail (printf "gateway.rtpPorts %q: LOW must be even and below HIGH (RTP on even ports, RTCP on the next odd one)" .Values.gateway.rtpPorts) -}}
{{- end -}}
{{- dict "low" $low "high" $high | toJson -}}
{{- end -}}

{{/*
The operator's rules on the trunkline resources, their Secrets and Events: a ClusterRole, or a
Role in operator.watchNamespace.
*/}}
{{- define "trunkline.operatorResourceRules" }}
  - apiGroups: ["trunkline.dev"]
    resources: ["inboundtrunks", "outboundtrunks", "transferdestinations"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["trunkline.dev"]
    resources: ["inboundtrunks/status", "outboundtrunks/status", "transferdestinations/status"]
    verbs: ["get", "patch"]
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch", "create", "patch"]
  - apiGroups: ["", "events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}

{{/*
The gateways' read access to the three trunkline.dev kinds: a ClusterRole, or a Role in
operator.watchNamespace.
*/}}
{{- define "trunkline.gatewayReadRule" }}
  - apiGroups: ["trunkline.dev"]
    resources: ["inboundtrunks", "outboundtrunks", "transferdestinations"]
    verbs: ["get", "list", "watch"]
{{- end }}
