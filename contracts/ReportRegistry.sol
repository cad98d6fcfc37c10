// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ReportRegistry: an append-only public registry of trusted-loader integrity reports.
/// @notice A report is keyed by the SHA-256 of its exact bytes (the `sha256:<hex>` digest that
/// `trusted-loader digest` prints for the report file). The contract checks that key itself, so
/// nobody can occupy a digest with other bytes. Publishing a digest that is already registered is
/// a no-op: no second event, no revert, so a publisher that retries after a crash is harmless.
/// The report bytes live only in the event log; the lookup stores where to find them.
contract ReportRegistry {
    struct Entry {
        uint64 blockNumber;
        address publisher;
        bytes32 subject;
    }

    /// @notice Emitted once per digest, in the block recorded by `lookup`.
    event ReportPublished(
        bytes32 indexed digest,
        bytes32 indexed subject,
        address indexed publisher,
        bytes report
    );

    /// @notice The report's SHA-256 is not the digest it was published under.
    error DigestMismatch(bytes32 expected, bytes32 actual);

    mapping(bytes32 => Entry) private _entries;

    /// @notice Register `report` under `digest` (its SHA-256) for `subject` (the order or job).
    /// @return published true when this call registered the digest, false when it already was.
    function publish(bytes32 digest, bytes32 subject, bytes calldata report) external returns (bool published) {
        bytes32 actual = sha256(report);
        if (actual != digest) revert DigestMismatch(digest, actual);
        if (_entries[digest].blockNumber != 0) return false;
        _entries[digest] = Entry(uint64(block.number), msg.sender, subject);
        emit ReportPublished(digest, subject, msg.sender, report);
        return true;
    }

    /// @notice Where the report with `digest` was published; blockNumber 0 when it never was.
    function lookup(bytes32 digest) external view returns (uint64 blockNumber, address publisher, bytes32 subject) {
        Entry storage entry = _entries[digest];
        return (entry.blockNumber, entry.publisher, entry.subject);
    }
}
