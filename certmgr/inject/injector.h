#pragma once

// The sidecar injector: takes a Pod template (a Pod's or a workload's `metadata` and `spec`) and
// adds what meshes it in transparent mode, with the sidecar's config generated from the pod
// itself and the mesh-wide settings. Both entry points use it: `meshtls-certmgr inject` (on
// manifests) and the admission webhook (on Pods). docs/injection.md documents every change it
// makes and every annotation it reads; a change here changes that page.
//
// Pure functions over config::YamlNode trees: no I/O, no clock, safe on any thread.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/config/yaml_tree.h"

namespace meshtls::inject {

// The ports and names the injector gives the sidecar; a pod that uses one of them is refused.
inline constexpr int kAdminPort = 15000;
inline constexpr int kOutboundCapturePort = 15001;
inline constexpr int kInboundCapturePort = 15006;
inline constexpr absl::string_view kSidecarName = "meshtls-sidecar";
inline constexpr absl::string_view kInitName = "meshtls-init";
inline constexpr absl::string_view kConfigAnnotation = "meshtls.io/sidecar-config";
inline constexpr absl::string_view kInjectKey = "meshtls.io/inject";  // label or annotation

// MeshSettings are the mesh-wide inputs: certmgr's `trust_domain` and its `injection` section
// (proto/meshtls/config/v1/certmgr.proto documents each field and its default). A plain value;
// the defaults here are the schema's, for callers without a config (tests).
struct MeshSettings {
  std::string trust_domain = "cluster.local";
  std::string image = "meshtls";
  std::string image_pull_policy = "IfNotPresent";
  std::string certmgr_address = "certmgr-headless.meshtls-system.svc:8443";
  std::string ca_bundle_config_map = "meshtls-ca-bundle";
  std::string token_audience = "meshtls";
  int proxy_uid = 1337;
  std::string inbound_mode = "strict";
  std::vector<std::string> inbound_allow;  // empty: spiffe://<trust_domain>/ns/*
  // Destinations reached over mutual TLS (the cluster's pod and service networks); empty: all.
  std::vector<std::string> mesh_networks;
  std::string other_destinations = "passthrough";  // outside mesh_networks: passthrough or deny
  std::vector<std::string> exclude_outbound_networks;
  std::vector<int> exclude_outbound_ports = {53};
};

// What InjectPodTemplate did.
enum class Outcome {
  kInjected,
  kAlreadyInjected,  // it holds the sidecar already: unchanged
  kOptedOut,         // meshtls.io/inject: disabled (label or annotation): unchanged
};

absl::string_view OutcomeName(Outcome outcome);

// InjectPodTemplate meshes `pod`, a mapping with `metadata` and `spec` (a Pod, or the template of
// a workload), in place. On error `pod` is unchanged and the message names what cannot be meshed
// and why (host network, a port or name the sidecar needs, a bad annotation, a probe it cannot
// carry). Idempotent: injecting an injected pod returns kAlreadyInjected and changes nothing.
absl::StatusOr<Outcome> InjectPodTemplate(const MeshSettings& mesh, config::YamlNode& pod);

// ManifestResult counts what InjectManifests did, by object.
struct ManifestResult {
  int injected = 0;
  int already_injected = 0;
  int opted_out = 0;
  int other = 0;  // objects that hold no Pod template, left as they are
};

// InjectManifests injects every Pod template of `documents` (Pod, Deployment, StatefulSet,
// DaemonSet, ReplicaSet, Job, CronJob, and the items of a List), leaving every other object and
// every empty document as it is. Stops at the first object it cannot mesh, with an error naming
// the document, kind and name; `documents` may then be partly injected.
absl::StatusOr<ManifestResult> InjectManifests(const MeshSettings& mesh,
                                               std::vector<config::YamlNode>& documents);

// PodTemplateOf finds the Pod template in a Kubernetes object by its kind (the object itself for
// a Pod); nullptr for kinds that hold none.
config::YamlNode* PodTemplateOf(config::YamlNode& object);

}  // namespace meshtls::inject
