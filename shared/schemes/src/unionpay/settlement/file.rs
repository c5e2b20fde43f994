//! Asking for a settlement file, and unpacking `fileContent` (base64, zlib, a ZIP of the ZM and ZME files).

use super::*;

/// The signed fields of a settlement file request for `settle_date`, sent
/// at `now` (UnionPay requires the current time in `txnTime`).
///
/// # Errors
/// A signing failure.
pub fn file_request(
    key: &SigningKey,
    mer_id: &str,
    settle_date: Date,
    now: OffsetDateTime,
) -> Result<Fields, VerifyError> {
    let mut fields = Fields::from_pairs([
        ("version", "5.1.0"),
        ("encoding", "utf-8"),
        ("signMethod", "01"),
        ("txnType", "76"),
        ("txnSubType", "01"),
        ("bizType", DEFAULT_BIZ_TYPE),
        ("accessType", "0"),
        ("merId", mer_id),
        ("fileType", "00"),
    ])?;
    fields.set("settleDate", &mmdd(settle_date));
    fields.set("txnTime", &txn_time(now));
    key.sign(&mut fields)?;
    Ok(fields)
}

/// `MMDD`, as `settleDate` is written.
pub fn mmdd(d: Date) -> String {
    format!("{:02}{:02}", u8::from(d.month()), d.day())
}

/// The files of a `fileContent`: base64, then zlib, then a ZIP archive.
///
/// # Errors
/// [`SettlementError`] naming the layer that failed.
pub fn decode_file_content(file_content: &str) -> Result<Vec<(String, Vec<u8>)>, SettlementError> {
    unzip(&inflate_file_content(file_content)?)
}

/// The ZIP archive in a `fileContent` (base64, then zlib).
///
/// # Errors
/// `Base64` or `Zlib`.
pub fn inflate_file_content(file_content: &str) -> Result<Vec<u8>, SettlementError> {
    let zlib = base64::engine::general_purpose::STANDARD
        .decode(file_content.trim())
        .map_err(|_| SettlementError::Base64)?;
    let mut zip_bytes = Vec::new();
    flate2::read::ZlibDecoder::new(zlib.as_slice())
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut zip_bytes)
        .map_err(|e| SettlementError::Zlib(e.to_string()))?;
    if zip_bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SettlementError::Zlib(format!(
            "more than {MAX_FILE_BYTES} bytes once inflated"
        )));
    }
    Ok(zip_bytes)
}

/// The most a settlement archive or one of its files may hold once inflated.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// The files of a ZIP archive.
///
/// # Errors
/// `Zip` when it is not a readable archive.
pub fn unzip(zip_bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, SettlementError> {
    let zip_err = |e: zip::result::ZipError| SettlementError::Zip(e.to_string());
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).map_err(zip_err)?;
    let mut files = Vec::new();
    for i in 0..archive.len() {
        let file = archive.by_index(i).map_err(zip_err)?;
        if file.is_dir() {
            continue;
        }
        let name = file.name().map_err(zip_err)?.into_owned();
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| SettlementError::Zip(e.to_string()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(SettlementError::Zip(format!("{name} is too large")));
        }
        files.push((name, bytes));
    }
    Ok(files)
}

/// The ZM file (all transactions) among the files of an archive: the one
/// whose name holds `ZM_` (not `ZME_`, the error transactions).
///
/// # Errors
/// `NoZmFile` when there is none.
pub fn zm_file(files: &[(String, Vec<u8>)]) -> Result<&[u8], SettlementError> {
    files
        .iter()
        .find(|(name, _)| name.contains("ZM_") && !name.contains("ZME_"))
        .map(|(_, bytes)| bytes.as_slice())
        .ok_or_else(|| SettlementError::NoZmFile(files.iter().map(|(n, _)| n.clone()).collect()))
}

/// The ZME file (error transactions) among the files of an archive, if any.
pub fn zme_file(files: &[(String, Vec<u8>)]) -> Option<&[u8]> {
    files
        .iter()
        .find(|(name, _)| name.contains("ZME_"))
        .map(|(_, bytes)| bytes.as_slice())
}

/// Packs files the way UnionPay sends them in `fileContent`: a ZIP archive
/// (deflated entries), zlib-compressed, base64.
///
/// # Errors
/// An I/O error of the in-memory writers.
pub fn encode_file_content(files: &[(String, Vec<u8>)]) -> std::io::Result<String> {
    let mut zip_bytes = std::io::Cursor::new(Vec::new());
    {
        let mut writer = zip::ZipWriter::new(&mut zip_bytes);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in files {
            writer
                .start_file(name.as_str(), options)
                .map_err(std::io::Error::other)?;
            writer.write_all(bytes)?;
        }
        writer.finish().map_err(std::io::Error::other)?;
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(zip_bytes.get_ref())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(zlib.finish()?))
}
