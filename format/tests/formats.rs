//! Every format, byte for byte, on an entry with every field set.

mod common;

use audit_format::{Format, Template, TemplateOptions};

fn render(name: &str) -> String {
    Format::named(name)
        .unwrap_or_else(|| panic!("{name} is a format"))
        .render_to_string(&common::sample())
}

#[test]
fn httpd_lines() {
    assert_eq!(
        render("httpd-common"),
        r#"10.0.0.7:5555 - alice [22/Nov/2026:15:04:05 +0000] "/kms.v1.Keys/DeleteKey keys/k1" 7 -"#
    );
    assert_eq!(
        render("httpd-combined"),
        r#"10.0.0.7:5555 - alice [22/Nov/2026:15:04:05 +0000] "/kms.v1.Keys/DeleteKey keys/k1" 7 - "-" "grpc-go/1.60""#
    );
}

#[test]
fn cef_line() {
    assert_eq!(
        render("cef"),
        "CEF:0|audit|audit-server|0.1.0|KEY_DELETED|/kms.v1.Keys/DeleteKey|5|rt=1795359845120 \
         externalId=0193a5f0-7c2e-7000-8000-000000000001 cn1=42 cn1Label=sequence cs1=req-1 \
         cs1Label=requestId cs2=/kms.v1.Keys/DeleteKey cs2Label=method cs3=keys/k1 \
         cs3Label=resource cs4=PERMISSION_DENIED cs4Label=status sourceServiceName=kms \
         act=KEY_DELETED cat=KEY_MANAGEMENT outcome=DENIED msg=not allowed suser=alice \
         requestClientApplication=grpc-go/1.60 src=10.0.0.7 spt=5555 cs5=spiffe://prod/billing \
         cs5Label=spiffeId cn2=12 cn2Label=latencyMs cs6={\"region\":\"eu\"} cs6Label=labels"
    );
}

#[test]
fn cef_leaves_out_empty_custom_fields_with_their_labels() {
    let mut entry = common::sample();
    entry.resource.clear();
    let line = Format::named("cef").unwrap().render_to_string(&entry);
    assert!(!line.contains("cs3"), "{line}");
    assert!(
        line.contains(" cs2=/kms.v1.Keys/DeleteKey cs2Label=method cs4="),
        "{line}"
    );
}

#[test]
fn logstash_json() {
    assert_eq!(
        render("logstash"),
        r#"{"@timestamp":"2026-11-22T15:04:05.120Z","@version":1,"caller":{"address":"10.0.0.7:5555","certificate_subject":"CN=billing","principal":"alice","role":"admin","session_id":"s-9","spiffe_id":"spiffe://prod/billing","user_agent":"grpc-go/1.60"},"category":"KEY_MANAGEMENT","chain_hash":"cdcdcdcd","details":{"count":3.0,"key":{"sub":"k1"}},"entry_hash":"abababab","event":"KEY_DELETED","id":"0193a5f0-7c2e-7000-8000-000000000001","labels":{"region":"eu"},"latency_ms":12,"level":"WARNING","message":"DENIED PERMISSION_DENIED /kms.v1.Keys/DeleteKey keys/k1","method":"/kms.v1.Keys/DeleteKey","outcome":"DENIED","received_time":"2026-11-22T15:04:05.130Z","recorder":{"unix":{"binary_path":"/usr/bin/kms","gid":1000,"pid":4242,"uid":1000}},"request_id":"req-1","resource":"keys/k1","sequence":42,"source":"kms","status_code":7,"status_message":"not allowed","status_name":"PERMISSION_DENIED","time":"2026-11-22T15:04:05.120Z"}"#
    );
}

#[test]
fn proto3_json() {
    // Canonical proto3 JSON: fields in number order, lowerCamelCase, 64-bit integers as
    // strings, enums by name, bytes in base64.
    assert_eq!(
        render("json"),
        r#"{"id":"0193a5f0-7c2e-7000-8000-000000000001","sequence":"42","requestId":"req-1","time":"2026-11-22T15:04:05.120Z","receivedTime":"2026-11-22T15:04:05.130Z","source":"kms","method":"/kms.v1.Keys/DeleteKey","event":"KEY_DELETED","category":"KEY_MANAGEMENT","resource":"keys/k1","level":"LEVEL_WARNING","outcome":"OUTCOME_DENIED","statusCode":7,"statusMessage":"not allowed","caller":{"network":{"address":"10.0.0.7:5555","spiffeId":"spiffe://prod/billing","certificateSubject":"CN=billing"},"principal":"alice","role":"admin","sessionId":"s-9","userAgent":"grpc-go/1.60"},"recorder":{"unix":{"uid":1000,"gid":1000,"pid":4242,"binaryPath":"/usr/bin/kms"}},"latency":"0.012500s","details":{"count":3.0,"key":{"sub":"k1"}},"labels":{"region":"eu"},"entryHash":"q6urqw==","chainHash":"zc3NzQ=="}"#
    );
}

#[test]
fn proto3_json_reads_back_as_the_entry() {
    let entry = common::sample();
    let line = render("json");
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["sequence"], "42", "64-bit integers as strings");
    assert_eq!(value["outcome"], "OUTCOME_DENIED");
    let back: audit_format::proto_json::JsonEntries =
        audit_format::proto_json::entries_from_json(&line).unwrap();
    match back {
        audit_format::proto_json::JsonEntries::One(back) => assert_eq!(*back, entry),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ocsf_api_activity() {
    assert_eq!(
        render("ocsf"),
        r#"{"activity_id":4,"activity_name":"Delete","actor":{"session":{"uid":"s-9"},"user":{"name":"alice"}},"api":{"operation":"/kms.v1.Keys/DeleteKey","request":{"uid":"req-1"},"response":{"code":7,"message":"not allowed"},"service":{"name":"kms"}},"category_name":"Application Activity","category_uid":6,"class_name":"API Activity","class_uid":6003,"cloud":{"provider":"self-hosted"},"http_request":{"user_agent":"grpc-go/1.60"},"message":"DENIED PERMISSION_DENIED /kms.v1.Keys/DeleteKey keys/k1","metadata":{"correlation_uid":"req-1","logged_time":1795359845130,"product":{"name":"audit-server","vendor_name":"audit","version":"0.1.0"},"sequence":42,"uid":"0193a5f0-7c2e-7000-8000-000000000001","version":"1.1.0"},"resources":[{"name":"keys/k1","type":"KEY_MANAGEMENT"}],"severity":"Medium","severity_id":3,"src_endpoint":{"ip":"10.0.0.7","name":"spiffe://prod/billing","port":5555,"uid":"10.0.0.7:5555"},"status":"Failure","status_code":"PERMISSION_DENIED","status_detail":"not allowed","status_id":2,"time":1795359845120,"type_name":"API Activity: Delete","type_uid":600304,"unmapped":{"category":"KEY_MANAGEMENT","chain_hash":"cdcdcdcd","details":{"count":3.0,"key":{"sub":"k1"}},"entry_hash":"abababab","event":"KEY_DELETED","labels":{"region":"eu"}}}"#
    );
}

#[test]
fn ocsf_has_the_fields_api_activity_requires() {
    let event: serde_json::Value = serde_json::from_str(&render("ocsf")).unwrap();
    // Required by the API Activity class (OCSF 1.1) and its base event.
    for field in [
        "activity_id",
        "actor",
        "api",
        "category_uid",
        "class_uid",
        "cloud",
        "metadata",
        "severity_id",
        "src_endpoint",
        "time",
        "type_uid",
    ] {
        assert!(event.get(field).is_some(), "OCSF event lacks `{field}`");
    }
    assert!(event["api"]["operation"].is_string());
    assert!(event["metadata"]["product"]["vendor_name"].is_string());
    assert!(event["metadata"]["version"].is_string());
    assert_eq!(
        event["type_uid"].as_u64().unwrap(),
        event["class_uid"].as_u64().unwrap() * 100 + event["activity_id"].as_u64().unwrap()
    );
}

#[test]
fn ecs_document() {
    assert_eq!(
        render("ecs"),
        r#"{"@timestamp":"2026-11-22T15:04:05.120Z","audit":{"category":"KEY_MANAGEMENT","chain_hash":"cdcdcdcd","details":{"count":3.0,"key":{"sub":"k1"}},"entry_hash":"abababab","method":"/kms.v1.Keys/DeleteKey","request_id":"req-1","resource":"keys/k1","session_id":"s-9","spiffe_id":"spiffe://prod/billing","status_code":7,"status_name":"PERMISSION_DENIED"},"ecs":{"version":"8.11.0"},"event":{"action":"KEY_DELETED","created":"2026-11-22T15:04:05.130Z","dataset":"audit.entries","duration":12500000,"id":"0193a5f0-7c2e-7000-8000-000000000001","kind":"event","outcome":"failure","provider":"kms","reason":"not allowed","sequence":42,"severity":5},"labels":{"region":"eu"},"log":{"level":"warning"},"message":"DENIED PERMISSION_DENIED /kms.v1.Keys/DeleteKey keys/k1","service":{"name":"kms"},"source":{"address":"10.0.0.7:5555","ip":"10.0.0.7","port":5555},"user":{"name":"alice","roles":["admin"]},"user_agent":{"original":"grpc-go/1.60"}}"#
    );
}

fn template(text: &str) -> String {
    Template::parse(
        text,
        TemplateOptions {
            prefix: "[audit]".into(),
            no_value: "-".into(),
        },
    )
    .unwrap()
    .render_to_string(&common::sample())
}

#[test]
fn template_variables_reach_every_field() {
    assert_eq!(
        template(
            "%{prefix} %{time} #%{sequence} %{outcome} %{status_code}/%{status_name} %{level}"
        ),
        "[audit] 2026-11-22T15:04:05.120Z #42 DENIED 7/PERMISSION_DENIED WARNING"
    );
    assert_eq!(
        template(
            "%{caller.principal} %{caller.spiffe_id} %{caller.address} %{caller.role} %{caller.session_id} %{caller.user_agent} %{caller.certificate_subject}"
        ),
        "alice spiffe://prod/billing 10.0.0.7:5555 admin s-9 grpc-go/1.60 CN=billing"
    );
    assert_eq!(
        template(
            "%{recorder.unix.uid}:%{recorder.unix.gid} pid %{recorder.unix.pid} %{recorder.unix.binary_path} %{recorder.address}"
        ),
        "1000:1000 pid 4242 /usr/bin/kms -"
    );
    assert_eq!(
        template(
            "%{labels.region} %{labels.zone} %{details.key.sub} %{details.count} %{details.key}"
        ),
        r#"eu - k1 3 {\"sub\":\"k1\"}"#
    );
    assert_eq!(
        template(
            "%{latencyMs}ms %{latency} %{id} %{request_id} %{source} %{method} %{event} %{category} %{resource} %{status_message} %{entry_hash} %{chain_hash}"
        ),
        "12ms 0.0125s 0193a5f0-7c2e-7000-8000-000000000001 req-1 kms /kms.v1.Keys/DeleteKey KEY_DELETED KEY_MANAGEMENT keys/k1 not allowed abababab cdcdcdcd"
    );
    assert_eq!(
        template("%{received_time:rfc3339nano}"),
        "2026-11-22T15:04:05.13Z"
    );
}

#[test]
fn template_formats_quote_pad_truncate_and_lay_out_times() {
    assert_eq!(
        template("%{time:kitchen}|%{time:rfc1123z}"),
        "3:04PM|Sun, 22 Nov 2026 15:04:05 +0000"
    );
    assert_eq!(template("%{time:2006/01/02 15h04}"), "2026/11/22 15h04");
    assert_eq!(
        template("[%{source:6s}] [%{source:-6s}] [%{method:.4s}]"),
        "[   kms] [kms   ] [/kms]"
    );
    assert_eq!(
        template("%{sequence:d} %{sequence:5d} %{sequence:05d} %{sequence:x}"),
        "42    42 00042 2a"
    );
    assert_eq!(
        template("%{status_message:q} %{labels.none:q}"),
        r#""not allowed" -"#
    );
    assert_eq!(template("100%%{x} %done"), "100%{x} %done");
}

#[test]
fn no_value_is_configurable() {
    let template = Template::parse(
        "%{labels.none}|%{caller.unix.uid}",
        TemplateOptions {
            prefix: String::new(),
            no_value: "<none>".into(),
        },
    )
    .unwrap();
    assert_eq!(
        template.render_to_string(&common::sample()),
        "<none>|<none>"
    );
}

#[test]
fn template_errors_name_the_problem_and_its_position() {
    let error = |text: &str| Template::parse(text, TemplateOptions::default()).unwrap_err();
    let unknown = error("ok %{nope} later");
    assert_eq!(unknown.position, 4);
    assert!(
        unknown.message.contains("unknown variable `nope`"),
        "{unknown}"
    );
    let format = error("%{method} %{time:not a layout}");
    assert_eq!(format.position, 11);
    assert!(format.message.contains("unknown time layout"), "{format}");
    assert!(error("%{method:d}").message.contains("does not apply"));
    assert!(error("%{time:5s}").message.contains("does not apply"));
    assert!(
        error("%{sequence:zz}")
            .message
            .contains("unknown format `zz`")
    );
    assert!(error("tail %{method").message.contains("not closed"));
    assert_eq!(
        error("é %{labels.}").position,
        3,
        "positions count characters"
    );
}
