"""The documentation a newcomer reads: every link resolves, and the session of PROTOCOL.md is true.

A clone has nothing beside the repository, so a link to `../shared/...` (or any
path outside it) is broken for every reader but us. Links to other Markdown
files are checked down to their `#anchor`, with the anchors GitHub makes from
headings. The whole session in hex of docs/PROTOCOL.md §9 is checked against
itself and replayed against a fresh server. About 2 s, most of it the server's
start.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from Crypto.Cipher import AES
from Crypto.PublicKey import RSA
from Crypto.Util.Padding import pad, unpad
from session_example import CLIENT_NAME, FILE_CONTENT, FILE_NAME, Session, session_from_doc
from support import REPO_ROOT, RawConnection, ServerProcess

from crypto_utils import cksum, export_public_key, unwrap_aes_key
from protocol import RESPONSE_HEADER, FileReceivedResponse

DOCUMENTS = sorted(
    {
        REPO_ROOT / "README.md",
        REPO_ROOT / "SECURITY.md",
        REPO_ROOT / "bench" / "README.md",
        REPO_ROOT / "client" / "README.md",
        *(REPO_ROOT / "docs").glob("*.md"),
    }
)
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(document: Path, target: str) -> str | None:
    """Why `target`, linked from `document`, does not resolve inside the repository; None if it does."""
    path_part, _, anchor = target.partition("#")
    linked = (document.parent / path_part).resolve() if path_part else document
    if not linked.is_relative_to(REPO_ROOT):
        return "points outside the repository (a clone has nothing there)"
    if not linked.exists():
        return "no such file"
    if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
        return f"{linked.relative_to(REPO_ROOT)} has no heading #{anchor}"
    return None


def test_the_documents_are_there() -> None:
    names = {str(path.relative_to(REPO_ROOT)) for path in DOCUMENTS}
    expected = {"docs/PROTOCOL.md", "docs/server.md", "docs/grading.md", "bench/README.md"}
    assert expected <= names
    assert all(path.is_file() for path in DOCUMENTS)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    problems = [
        f"{target}: {why}"
        for target in links(document)
        if not EXTERNAL.match(target) and (why := broken(document, target)) is not None
    ]
    assert not problems, f"{document.relative_to(REPO_ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_nothing_refers_to_the_shared_folder(document: Path) -> None:
    """Not even in code: `../shared` exists on the team's machine only."""
    assert "../shared" not in document.read_text(encoding="utf-8")


def test_the_link_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checker itself: a missing file, a missing anchor and an escape are each caught."""
    document = REPO_ROOT / "docs" / "PROTOCOL.md"
    assert broken(document, "server.md") is None
    assert broken(document, "#1-transport-and-framing") is None
    assert broken(document, "../SECURITY.md#threat-model") is None
    assert broken(document, "missing.md") == "no such file"
    assert broken(document, "#no-such-heading") == "docs/PROTOCOL.md has no heading #no-such-heading"
    assert broken(document, "../../shared/PROTOCOL.md") is not None
    assert "(a clone has nothing there)" in (broken(document, "../../shared/PROTOCOL.md") or "")
    sample = tmp_path / "sample.md"
    sample.write_text('[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n![d](img.png "title")\n')
    assert links(sample) == ["x.md", "img.png"]
    assert slug("6. The client's flow") == "6-the-clients-flow"
    assert slug("Decisions where the text is silent") == "decisions-where-the-text-is-silent"


def test_the_readme_scripts_exist_and_run() -> None:
    """Every `./script` the README tells you to run is there and executable."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    scripts = set(re.findall(r"(?m)^\./([\w.-]+)", readme))
    assert {"run-server.sh", "test.sh"} <= scripts
    for script in scripts:
        path = REPO_ROOT / script
        assert path.is_file() and path.stat().st_mode & 0o111, f"{script} is not an executable file"


# --- the session of docs/PROTOCOL.md §9 -------------------------------------------------------

# The bytes that are random in every run (§9, "What is different in another run"),
# as (first offset, last offset), inclusive as the doc writes them.
CLIENT_ID_IN_RESPONSE = (7, 22)
CLIENT_ID_IN_REQUEST = (0, 15)
ENCRYPTED_AES_KEY = (23, 150)
ENCRYPTED_CONTENT = (282, 297)
SESSION_ORDER = [
    "request 1025",
    "response 2100",
    "request 1026",
    "response 2102",
    "request 1028",
    "response 2103",
    "request 1029",
    "response 2104",
]


def private_key_of(session: Session) -> RSA.RsaKey:
    lines = session.me_info.splitlines()
    return RSA.import_key(base64.b64decode("".join(lines[2:])))


def field(data: bytes, span: tuple[int, int]) -> bytes:
    return data[span[0] : span[1] + 1]


def differences(actual: bytes, recorded: bytes) -> list[int]:
    assert len(actual) == len(recorded), f"{len(actual)} bytes, the doc shows {len(recorded)}"
    return [offset for offset, (a, b) in enumerate(zip(actual, recorded, strict=True)) if a != b]


def outside(offsets: list[int], *spans: tuple[int, int]) -> list[int]:
    """The offsets outside every span: bytes that should have been equal."""
    return [offset for offset in offsets if not any(first <= offset <= last for first, last in spans)]


def test_the_session_in_the_doc_is_whole_and_agrees_with_itself() -> None:
    """§9 is one true session: its key unwraps, its content decrypts to its file, its cksum is
    that file's, and every header says what the protocol says."""
    session = session_from_doc()
    assert [message.label for message in session.messages] == SESSION_ORDER
    assert session.file_content == FILE_CONTENT
    key = private_key_of(session)
    me_lines = session.me_info.splitlines()
    assert me_lines[0] == CLIENT_NAME
    client_id = bytes.fromhex(me_lines[1])
    register, registered, public_key, aes_key, send_file, received, crc_ok, ack = session.messages
    assert field(registered.data, CLIENT_ID_IN_RESPONSE) == client_id
    for later in (public_key, send_file, crc_ok):
        assert field(later.data, CLIENT_ID_IN_REQUEST) == client_id
    for response in (aes_key, received, ack):
        assert field(response.data, CLIENT_ID_IN_RESPONSE) == client_id
    assert public_key.data[278:] == export_public_key(key)
    aes = unwrap_aes_key(key, field(aes_key.data, ENCRYPTED_AES_KEY))
    content = field(send_file.data, ENCRYPTED_CONTENT)
    assert len(send_file.data) == ENCRYPTED_CONTENT[1] + 1
    assert unpad(AES.new(aes, AES.MODE_CBC, iv=bytes(16)).decrypt(content), 16) == FILE_CONTENT
    assert FileReceivedResponse.unpack(received.data[7:]) == FileReceivedResponse(
        client_id, 16, FILE_NAME, cksum(FILE_CONTENT)
    )
    assert register.data[23:].split(b"\0", 1)[0] == CLIENT_NAME.encode()
    assert crc_ok.data[23:].split(b"\0", 1)[0] == FILE_NAME.encode()


def test_the_session_in_the_doc_replays_against_the_server(server: ServerProcess) -> None:
    """The doc's requests, sent to a fresh server, get the doc's responses: only the random
    bytes §9 lists differ. The new Client ID goes into each later request, and the file is
    encrypted with the new AES key (unwrapped with me.info's key) before it is sent."""
    session = session_from_doc()
    key = private_key_of(session)
    recorded = {message.label: message.data for message in session.messages}
    new_id = b""
    aes = b""
    with RawConnection(server.address) as connection:
        for request_label, response_label in zip(SESSION_ORDER[::2], SESSION_ORDER[1::2], strict=True):
            request = bytearray(recorded[request_label])
            if new_id:
                request[0:16] = new_id
            if request_label == "request 1028":
                encrypted = AES.new(aes, AES.MODE_CBC, iv=bytes(16)).encrypt(pad(FILE_CONTENT, 16))
                request[ENCRYPTED_CONTENT[0] : ENCRYPTED_CONTENT[1] + 1] = encrypted
            connection.send(bytes(request))
            answer = connection.receive()
            actual = RESPONSE_HEADER.pack(answer.version, answer.code, len(answer.payload)) + answer.payload
            random = [CLIENT_ID_IN_RESPONSE]
            if response_label == "response 2102":
                random.append(ENCRYPTED_AES_KEY)
            unexpected = outside(differences(actual, recorded[response_label]), *random)
            assert not unexpected, f"{response_label} differs from §9 at offsets {unexpected}"
            new_id = new_id or field(actual, CLIENT_ID_IN_RESPONSE)
            if response_label == "response 2102":
                aes = unwrap_aes_key(key, field(actual, ENCRYPTED_AES_KEY))
    assert new_id != field(recorded["response 2100"], CLIENT_ID_IN_RESPONSE), "a fresh, random ID"
    assert server.query("SELECT ID, FileName, Verified FROM files") == [(new_id, FILE_NAME, 1)]
