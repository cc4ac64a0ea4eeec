//! Compiles `rvirt/v1/*.proto` with protox (no system `protoc`), generates the tonic code, writes
//! the descriptor set served by gRPC reflection, and generates the access table from each
//! method's `(rvirt.v1.access)` option. A method without that option fails the build.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_reflect::Value;

const PACKAGE: &str = "rvirt.v1";

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto_dir = root.join("rvirt").join("v1");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let mut files: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&proto_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            let name = path.file_name().and_then(|n| n.to_str()).ok_or("bad file name")?;
            files.push(format!("rvirt/v1/{name}"));
        }
    }
    files.sort();

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files).map_err(|e| format!("{e:?}"))?;
    let fds = compiler.file_descriptor_set();
    std::fs::write(out_dir.join("rvirt_descriptor.bin"), fds.encode_to_vec())?;

    let pool = compiler.descriptor_pool();
    write_access_table(&pool, &out_dir.join("access_table.rs"))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A driver implements what it supports; the rest answers UNIMPLEMENTED, which clients
        // read as ERROR_CODE_OPERATION_UNSUPPORTED.
        .generate_default_stubs(true)
        // Secret values must never reach a log through a derived Debug.
        .skip_debug([
            ".rvirt.v1.SetSecretValueRequest",
            ".rvirt.v1.GetSecretValueResponse",
            ".rvirt.v1.GetSecretValueInternalResponse",
        ])
        .compile_fds(fds)?;
    Ok(())
}

fn write_access_table(pool: &prost_reflect::DescriptorPool, out: &Path) -> Result<(), Box<dyn Error>> {
    let ext = pool
        .get_extension_by_name("rvirt.v1.access")
        .ok_or("options.proto must define the rvirt.v1.access extension")?;
    let mut rows: Vec<(String, String, String, i32, String)> = Vec::new();
    let mut missing = Vec::new();
    for service in pool.services() {
        if service.package_name() != PACKAGE {
            continue;
        }
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&ext) {
                missing.push(method.full_name().to_owned());
                continue;
            }
            let value = options.get_extension(&ext);
            let Value::Message(access) = value.as_ref() else {
                return Err(format!("{}: access option is not a message", method.full_name()).into());
            };
            let level = access
                .get_field_by_name("level")
                .and_then(|v| v.as_enum_number())
                .unwrap_or(0);
            let permission = access
                .get_field_by_name("permission")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if level == 0 {
                missing.push(format!("{} (level unspecified)", method.full_name()));
            }
            if permission.is_empty() || !permission.contains('.') {
                return Err(format!(
                    "{}: access permission must be `<object>.<permission>`, got {permission:?}",
                    method.full_name()
                )
                .into());
            }
            rows.push((
                format!("/{}/{}", service.full_name(), method.name()),
                service.full_name().to_owned(),
                method.name().to_owned(),
                level,
                permission,
            ));
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "these RPCs declare no (rvirt.v1.access) option: {}",
            missing.join(", ")
        )
        .into());
    }
    rows.sort();
    let mut code = String::from(
        "/// Every RPC of the contract with the access it declares, sorted by gRPC path.\n\
         pub static ACCESS_TABLE: &[MethodAccess] = &[\n",
    );
    for (path, service, method, level, permission) in &rows {
        let level = match level {
            1 => "AccessLevel::Read",
            2 => "AccessLevel::Write",
            3 => "AccessLevel::Privileged",
            other => return Err(format!("{path}: unknown access level {other}").into()),
        };
        writeln!(
            code,
            "    MethodAccess {{ path: {path:?}, service: {service:?}, method: {method:?}, level: {level}, permission: {permission:?} }},"
        )?;
    }
    code.push_str("];\n");
    std::fs::write(out, code)?;
    Ok(())
}
