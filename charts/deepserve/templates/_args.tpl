{{/* Arguments of `deepserve operator run` (the image's entrypoint). */}}
{{- define "deepserve.operatorArgs" -}}
- --liveness=http://0.0.0.0:{{ .Values.health.port }}/healthz
{{- range .Values.operator.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- if .Values.operator.peering.enabled }}
- --peering={{ .Values.operator.peering.name }}
{{- else }}
- --standalone
{{- end }}
- --engine-image={{ include "deepserve.engineImage" . }}
- --usage-endpoint={{ include "deepserve.usageEndpoint" . }}
- --ingest-key-file={{ include "deepserve.ingestKeyDir" . }}/ingest-key
- --gateway-api={{ ternary "auto" "off" .Values.operator.gatewayApi.enabled }}
{{- if .Values.operator.gatewayApi.parentName }}
- --gateway={{ .Values.operator.gatewayApi.parentNamespace }}/{{ .Values.operator.gatewayApi.parentName }}
{{- end }}
- --resync-seconds={{ .Values.operator.resyncSeconds }}
{{- range .Values.operator.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Arguments of `deepserve billing serve` (the billing container). */}}
{{- define "deepserve.billingArgs" -}}
- --host=0.0.0.0
- --port={{ .Values.billing.port }}
- --token-file={{ include "deepserve.tokenDir" . }}/token
- --ingest-key-file={{ include "deepserve.ingestKeyDir" . }}/ingest-key
- --ledger={{ include "deepserve.ledgerPath" . }}
{{- end }}

{{/* The hardened container securityContext every container gets. */}}
{{- define "deepserve.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "deepserve.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: DEEPSERVE_LEDGER
  value: {{ include "deepserve.ledgerPath" . | quote }}
- name: PYTHONUNBUFFERED
  value: "1"
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- with .Values.operator.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
