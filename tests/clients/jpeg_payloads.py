"""SDK v3 ModelBuilder's payload translators for an image classifier (shared by the v3 client programs): the
request goes out as image/jpeg bytes, as `curl --data-binary @dog.jpg` sends it; the answer is JSON."""
import json

from sagemaker.serve.builder.schema_builder import SchemaBuilder
from sagemaker.serve.marshalling.custom_payload_translator import CustomPayloadTranslator


class JpegIn(CustomPayloadTranslator):
    def __init__(self):
        super().__init__(content_type="image/jpeg", accept_type="application/json")

    def serialize_payload_to_bytes(self, payload):
        return payload

    def deserialize_payload_from_stream(self, stream):
        return stream.read()


class JsonOut(CustomPayloadTranslator):
    def __init__(self):
        super().__init__(content_type="application/json", accept_type="application/json")

    def serialize_payload_to_bytes(self, payload):
        return json.dumps(payload).encode()

    def deserialize_payload_from_stream(self, stream):
        return json.loads(stream.read())


def jpeg_schema(jpeg: bytes) -> SchemaBuilder:
    return SchemaBuilder(jpeg, {"predictions": []}, input_translator=JpegIn(), output_translator=JsonOut())
